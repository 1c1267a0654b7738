"""Decode speed: tokens/s of prefill and of cached decoding, gpt small, batch 1 and 8.

Columns: the artifact's TVM CPU build and ONNX Runtime (both through ``Model.generate`` and its
KV-cache graphs), eager PyTorch with its own KV cache (``GPT.prefill``/``decode_step``), and
Hugging Face ``transformers``' ``GPT2LMHeadModel.generate`` on the very same weights: the script
makes a random GPT-2 with gpt-small's sizes, saves it, and imports it with ``--from-hf``. It also
checks that every fp32 column emits the same greedy tokens. Prefill tokens/s = batch * prompt /
prefill time; decode tokens/s = batch * (new - 1) / time of the decode steps. Medians of
``--repeat`` runs, every column timed in turn in each round.

``--precision fp32,int8,bf16`` adds a TVM build per reduced precision (``tvm-int8``, ...: the
dense layers of the main, prefill and decode graphs in that precision) to the same artifact and
the same interleaved rounds; "vs fp32" is each column's decode tokens/s over the fp32 TVM build's,
and "agree" the share of greedy tokens equal to fp32 TVM's (a reduced precision may pick another
token where two logits are close, and the continuation then differs: reported, not failed).

    python benchmarks/bench_generate.py [--prompt 64 --new 64 --batches 1,8 --repeat 3]
    python benchmarks/bench_generate.py --precision fp32,int8,bf16 --batches 1 --peers none
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench_generate")

_GPT2 = dict(activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
SMALL_GPT2 = dict(n_embd=256, n_layer=4, n_head=4, n_inner=1024, vocab_size=8000, n_positions=256, **_GPT2)
# A smoke-test size: checks the script end to end in a minute, never timed for claims.
TINY_GPT2 = dict(n_embd=64, n_layer=2, n_head=2, n_inner=256, vocab_size=512, n_positions=128, **_GPT2)
SIZES = {"small": SMALL_GPT2, "tiny": TINY_GPT2}
PEERS = ("ort", "eager-cached", "hf-generate")


def make_hf_gpt2(folder: Path, seed: int = 0, sizes: dict = SMALL_GPT2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**sizes)).eval()
    model.save_pretrained(folder)
    return model


def build_artifact(hf_folder: Path, out: Path, precisions: tuple[str, ...] = ("fp32",)) -> dict[str, str]:
    """Export the HF GPT-2 and compile a CPU build per precision into one artifact; {precision: tag}."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.export import ExportOptions, export_model

    export_model("gpt", out, ExportOptions(from_hf=hf_folder, golden_cases=1))
    tags = {}
    for precision in precisions:
        manifest = compile_artifact(out, CompileOptions(precision=precision))
        tags[precision] = next(t for t, b in manifest.builds.items() if b.precision == precision)
    return tags


def column_name(precision: str) -> str:
    return "tvm" if precision == "fp32" else f"tvm-{precision}"


def time_runtime(path: Path, backend: str, prompts: list[list[int]], new: int,
                 target: str | None = None) -> tuple[dict, list]:
    from forgeline.runtime import load

    model = load(path, backend=backend, target=target)
    model.generate(prompts, 2)  # warm-up: opens both graphs, first-call allocations
    result = model.generate(prompts, new)
    return result.seconds, result.ids


def time_eager_cached(model, prompts: list[list[int]], new: int) -> tuple[dict, list]:
    """GPT.prefill, then decode_step over caches preallocated to prompt + new columns."""
    ids = torch.tensor(prompts)
    B, T = ids.shape
    with torch.no_grad():
        start = time.perf_counter()
        logits, present = model.prefill(ids, torch.ones_like(ids))
        token = logits[:, -1].argmax(-1)
        seconds = {"prefill": time.perf_counter() - start}
        out = [token]
        start = time.perf_counter()
        caches = torch.zeros(present.shape[0] * 2, B, present.shape[3], T + new, present.shape[5])
        caches[:, :, :, :T] = present.flatten(0, 1)
        mask = torch.zeros(B, T + new, dtype=torch.long)
        mask[:, :T] = 1
        for t in range(T, T + new - 1):
            logits, new_kv = model.decode_step(token[:, None], mask, *caches)
            caches[:, :, :, t] = new_kv.flatten(0, 1)[..., 0, :]
            mask[:, t] = 1
            token = logits[:, 0].argmax(-1)
            out.append(token)
        seconds["decode"] = time.perf_counter() - start
    return seconds, torch.stack(out, 1).tolist()


def time_hf(model, prompts: list[list[int]], new: int) -> tuple[dict, list]:
    ids = torch.tensor(prompts)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        total = time.perf_counter() - start
    return {"prefill": prefill, "decode": max(total - prefill, 1e-9)}, out[:, ids.shape[1]:].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=64, help="new tokens per row")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--precision", default="fp32",
                        help="TVM builds to time, comma-separated: fp32 (always), int8, bf16")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"other columns, comma-separated, or none: {', '.join(PEERS)}")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="the random GPT-2's sizes: small (gpt small) or tiny (a smoke test)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    precisions = tuple(dict.fromkeys(["fp32", *(p.strip() for p in args.precision.split(",") if p.strip())]))
    peers = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)} or none")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("forgeline").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    from forgeline.define.hf_import import load_hf_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        hf_folder = Path(tmp) / "hf-gpt2"
        hf_model = make_hf_gpt2(hf_folder, sizes=SIZES[args.size])
        start = time.perf_counter()
        path = Path(tmp) / "artifact"
        tags = build_artifact(hf_folder, path, precisions)
        log.info("export + compile of gpt %s (with KV graphs) in %s: %.1f s", args.size, ", ".join(precisions),
                 time.perf_counter() - start)
        eager = load_hf_checkpoint(hf_folder)
        columns = make_columns(path, tags, peers, eager, hf_model, args.new)
        rows = run_all(columns, args, SIZES[args.size]["vocab_size"])
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["agree"] == 1.0 for r in rows if r["precision"] == "fp32") else 1


def make_columns(path: Path, tags: dict[str, str], peers: list[str], eager, hf_model, new: int) -> dict:
    """{column: (precision, run(prompts) -> (seconds, ids))}, the fp32 TVM build first."""
    columns = {column_name(p): (p, lambda prompts, tag=tag: time_runtime(path, "tvm", prompts, new, tag))
               for p, tag in tags.items()}
    peer_runs = {
        "ort": lambda prompts: time_runtime(path, "ort", prompts, new),
        "eager-cached": lambda prompts: time_eager_cached(eager, prompts, new),
        "hf-generate": lambda prompts: time_hf(hf_model, prompts, new),
    }
    columns.update({name: ("fp32", peer_runs[name]) for name in peers})
    return columns


def token_agreement(ids: list[list[int]], reference: list[list[int]]) -> float:
    """The share of generated tokens equal to the reference's at the same row and step."""
    got, want = np.asarray(ids), np.asarray(reference)
    return float((got == want).mean())


def run_all(columns: dict, args, vocab_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = rng.integers(0, vocab_size, (batch, args.prompt)).tolist()
        runs_of = {name: [] for name in columns}
        for _ in range(args.repeat):  # interleaved: every column sees the same machine load
            for name, (_, run) in columns.items():
                runs_of[name].append(run(prompts))
        reference = runs_of[column_name("fp32")][0][1]
        for name, runs in runs_of.items():
            prefill = statistics.median(r[0]["prefill"] for r in runs)
            decode = statistics.median(r[0]["decode"] for r in runs)
            rows.append({"backend": name, "precision": columns[name][0], "batch": batch,
                         "prefill_tok_s": batch * args.prompt / prefill,
                         "decode_tok_s": batch * (args.new - 1) / decode,
                         "decode_ms_per_step": 1e3 * decode / (args.new - 1),
                         "agree": token_agreement(runs[0][1], reference)})
            log.info("%s batch %d done", name, batch)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'backend':<14}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'ms/step':>9}{'vs fp32':>9}"
          f"{'vs ORT':>8}{'vs HF':>7}  greedy tokens = tvm fp32's")
    for r in rows:
        ref = {x["backend"]: x["decode_tok_s"] for x in rows if x["batch"] == r["batch"]}
        vs = lambda name: f"{r['decode_tok_s'] / ref[name]:.2f}" if name in ref else "-"  # noqa: E731
        print(f"{r['backend']:<14}{r['batch']:>6}{r['prefill_tok_s']:>15.0f}{r['decode_tok_s']:>14.0f}"
              f"{r['decode_ms_per_step']:>9.2f}{vs('tvm'):>9}{vs('ort'):>8}{vs('hf-generate'):>7}  {r['agree']:.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
