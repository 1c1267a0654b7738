"""Decode speed: tokens/s of prefill and of cached decoding, gpt small, batch 1 and 8.

Columns: the artifact's TVM CPU build and ONNX Runtime (both through ``Model.generate`` and its
KV-cache graphs), eager PyTorch with its own KV cache (``GPT.prefill``/``decode_step``), and
Hugging Face ``transformers``' ``GPT2LMHeadModel.generate`` on the very same weights: the script
makes a random GPT-2 with gpt-small's sizes, saves it, and imports it with ``--from-hf``. It also
checks that every column emits the same greedy tokens. Prefill tokens/s = batch * prompt / prefill
time; decode tokens/s = batch * (new - 1) / time of the decode steps. Medians of ``--repeat`` runs.

    python benchmarks/bench_generate.py [--prompt 64 --new 64 --batches 1,8 --repeat 3]
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

SMALL_GPT2 = dict(n_embd=256, n_layer=4, n_head=4, n_inner=1024, vocab_size=8000, n_positions=256,
                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def make_hf_gpt2(folder: Path, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2)).eval()
    model.save_pretrained(folder)
    return model


def build_artifact(hf_folder: Path, out: Path) -> Path:
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    export_model("gpt", out, ExportOptions(from_hf=hf_folder, golden_cases=1))
    compile_artifact(out)
    return out


def time_runtime(path: Path, backend: str, prompts: list[list[int]], new: int) -> tuple[dict, list]:
    from forgeline.runtime import load

    model = load(path, backend=backend)
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
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("forgeline").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    from forgeline.define.hf_import import load_hf_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        hf_folder = Path(tmp) / "hf-gpt2"
        hf_model = make_hf_gpt2(hf_folder)
        start = time.perf_counter()
        path = build_artifact(hf_folder, Path(tmp) / "artifact")
        log.info("export + compile of gpt small (with KV graphs): %.1f s", time.perf_counter() - start)
        eager = load_hf_checkpoint(hf_folder)
        rows = run_all(path, eager, hf_model, args)
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["same_tokens"] for r in rows) else 1


def run_all(path: Path, eager, hf_model, args) -> list[dict]:
    columns = {
        "tvm": lambda p: time_runtime(path, "tvm", p, args.new),
        "ort": lambda p: time_runtime(path, "ort", p, args.new),
        "eager-cached": lambda p: time_eager_cached(eager, p, args.new),
        "hf-generate": lambda p: time_hf(hf_model, p, args.new),
    }
    rng = np.random.default_rng(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = rng.integers(0, SMALL_GPT2["vocab_size"], (batch, args.prompt)).tolist()
        reference = None
        runs_of = {name: [] for name in columns}
        for _ in range(args.repeat):  # interleaved: every column sees the same machine load
            for name, run in columns.items():
                runs_of[name].append(run(prompts))
        for name, runs in runs_of.items():
            ids = runs[0][1]
            reference = ids if reference is None else reference
            prefill = statistics.median(r[0]["prefill"] for r in runs)
            decode = statistics.median(r[0]["decode"] for r in runs)
            rows.append({"backend": name, "batch": batch, "prefill_tok_s": batch * args.prompt / prefill,
                         "decode_tok_s": batch * (args.new - 1) / decode, "decode_ms_per_step": 1e3 * decode / (args.new - 1),
                         "same_tokens": ids == reference})
            log.info("%s batch %d done", name, batch)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'backend':<14}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'ms/step':>9}{'vs ORT':>8}"
          f"{'vs HF':>7}  same tokens as tvm")
    for r in rows:
        ref = {x["backend"]: x["decode_tok_s"] for x in rows if x["batch"] == r["batch"]}
        vs = lambda name: f"{r['decode_tok_s'] / ref[name]:.2f}" if name in ref else "-"  # noqa: E731
        print(f"{r['backend']:<14}{r['batch']:>6}{r['prefill_tok_s']:>15.0f}{r['decode_tok_s']:>14.0f}"
              f"{r['decode_ms_per_step']:>9.2f}{vs('ort'):>8}{vs('hf-generate'):>7}  {r['same_tokens']}")

if __name__ == "__main__":
    raise SystemExit(main())
