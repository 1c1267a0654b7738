"""How far each precision is from eager fp32 PyTorch: forgeline's builds beside OpenVINO and ORT int8.

One table, one row per (model, backend), on the same fresh held-out inputs:

- **max abs**: the largest |output - eager fp32| over the logits outputs (every ``*logits``);
- **top-1**: the share of positions whose logits' argmax equals eager fp32's;
- **routing flips**: MoE models only: how many routing decisions (``routing.*`` outputs) differ
  from eager fp32's, out of all of them. Counted and printed, never hidden;
- **greedy**: on a GPT trained briefly on the shipped Shakespeare corpus, the share of greedily
  generated tokens identical to eager fp32's continuation of the same held-out prompts, and the
  shortest identical prefix (every backend generates by re-running its main graph on the whole
  sequence, so peers without KV-cache graphs are measured the same way).

Backends: every TVM build of the artifact this host can run: fp32, and each reduced CPU precision
forgeline has (``compile.precision.PRECISIONS``: bf16, and int8 where it exists; ``--precisions``);
then the reference points on the same inputs: OpenVINO at its default precision (bf16 on CPUs with
AVX512-BF16 or AMX; ``pip install openvino``) and ONNX Runtime after ``quantize_dynamic`` (int8
weights). A backend that cannot run here is a row saying why.

    python benchmarks/precision_accuracy.py                                  # gpt, bert, bert-moe, small
    python benchmarks/precision_accuracy.py --models gpt --preset tiny --sizes 1x16 --seeds 1 \\
        --train-steps 20 --generate 8 --work-dir /tmp/acc                     # a quick check

Artifacts are built into ``--work-dir`` and reused when present. Writes
``benchmarks/results/precision_accuracy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("precision_accuracy")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HELD_OUT_SEED = 5_000  # seeds neither the golden (0..) nor `forgeline check` (1000..) cases use
SHAKESPEARE = "gpt-shakespeare"
Runner = Callable[[dict], dict]  # inputs by name -> outputs by name


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt,bert,bert-moe", help="comma-separated model names (random init)")
    p.add_argument("--preset", default="small")
    p.add_argument("--sizes", default="1x128,8x128", help="comma-separated BATCHxSEQ of the held-out inputs")
    p.add_argument("--seeds", type=int, default=2, help="held-out cases per size")
    p.add_argument("--precisions", default="auto", help="reduced CPU precisions to build: auto (all), e.g. bf16")
    p.add_argument("--bf16-kernels", default="auto", help="auto, amx, avx512bf16 (comma-separated)")
    p.add_argument("--train-steps", type=int, default=200, help="Shakespeare GPT training steps (0: skip it)")
    p.add_argument("--train-preset", default="small", help="its preset (d_model 128, FFN 512, 128 positions)")
    p.add_argument("--generate", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/precision_accuracy"))
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


# -- artifacts ---------------------------------------------------------------------------------

def build(name: str, preset: str, out: Path, precisions, kernels, weights: Path | None = None) -> Path:
    """Export + compile fp32 and every reduced precision (reused when the manifest has builds)."""
    from forgeline.bench.precisions import compile_precisions
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model
    from forgeline.runtime.format import Manifest

    if not ((out / "manifest.json").is_file() and Manifest.load(out).builds):
        export_model(name, out, ExportOptions(preset=preset, overwrite=True, generation_graphs=False, weights=weights))
        compile_artifact(out)
    compile_precisions(out, precisions, kernels)  # those it lacks
    return out


def train_shakespeare(work: Path, steps: int, preset: str) -> Path:
    """A GPT trained ``steps`` steps on the shipped corpus (the README's recipe, shortened)."""
    from forgeline.train.trainer import TrainOptions, train

    ckpt = work / f"{SHAKESPEARE}-{preset}-{steps}.safetensors"
    if not ckpt.is_file():
        overrides = {"d_model": 128, "d_ff": 512, "max_positions": 128} if preset == "small" else {}
        options = TrainOptions(steps=steps, seq_len=min(128, 64 if preset == "tiny" else 128), lr=2e-3,
                               warmup_steps=min(50, steps // 4), eval_every=max(steps, 1))
        train("gpt", ckpt, options, preset=preset, overwrite=True, overrides=overrides)
    return ckpt


# -- backends ----------------------------------------------------------------------------------

def backends(root: Path, work: Path) -> dict[str, Runner | str]:
    """name -> runner, or -> the sentence saying why it cannot run here."""
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.host import can_run, describe_host
    from forgeline.runtime.model import load

    manifest, host, found = Manifest.load(root), describe_host(), {}
    for tag, b in manifest.builds.items():
        ok, why = can_run(b.requires, host)
        label = f"forgeline {b.precision} ({tag})"
        if b.codegen_only or not ok:
            found[label] = why or "codegen only"
            continue
        model = load(root, target=tag)
        found[label] = lambda inputs, model=model: model.run(**inputs)
    for label, make in (("openvino default", _openvino), ("ort int8 quantize_dynamic", _ort_int8)):
        try:
            name, runner = make(root, manifest, work)
            found[f"{label} ({name})" if name else label] = runner
        except Exception as exc:  # noqa: BLE001 - a peer's failure is a row, not a crash
            found[label] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return found


def _openvino(root: Path, manifest, work: Path):
    import openvino as ov

    from forgeline.runtime.format import ONNX_FILE

    compiled = ov.Core().compile_model(str(root / ONNX_FILE), "CPU")  # dynamic shapes, its default
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(inputs: dict) -> dict:
        got = request.infer(inputs).to_tuple()
        return {n: np.array(v) for n, v in zip(names, got)}

    precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "bf16" or "f32"
    return getattr(precision, "to_string", lambda: str(precision))(), run


def _ort_int8(root: Path, manifest, work: Path):
    import onnxruntime as ort

    from forgeline.bench.peer_runners import quantized_onnx

    work.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(quantized_onnx(root, work)), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return "", lambda inputs: dict(zip(names, session.run(None, inputs)))


# -- measurements ------------------------------------------------------------------------------

def compare(cases, runner: Runner) -> dict:
    """max abs, top-1 and routing flips of ``runner`` against the eager fp32 outputs of ``cases``."""
    from forgeline.runtime.format import ROUTING_PREFIX

    row = {"max_abs": 0.0, "top1_hits": 0, "positions": 0, "routing_flips": 0, "routing_decisions": 0}
    for case in cases:
        got = runner(case.inputs)
        for name, want in case.outputs.items():
            out = np.asarray(got[name])
            if name.startswith(ROUTING_PREFIX):
                row["routing_flips"] += int((out != want).sum())
                row["routing_decisions"] += int(want.size)
                continue
            if name.endswith("logits"):
                row["max_abs"] = max(row["max_abs"], float(np.abs(out.astype(np.float64) - want).max()))
                row["top1_hits"] += int((out.argmax(-1) == want.argmax(-1)).sum())
                row["positions"] += int(np.prod(want.shape[:-1]))
    row["top1"] = row["top1_hits"] / row["positions"] if row["positions"] else None
    return row


def held_out_cases(root: Path, sizes, seeds: int):
    from forgeline.define import load_checkpoint
    from forgeline.export.eager import make_case
    from forgeline.runtime.format import WEIGHTS_FILE

    eager = load_checkpoint(root / WEIGHTS_FILE)
    return [make_case(eager, {"batch": b, "seq": t}, HELD_OUT_SEED + 10 * i + s, f"{b}x{t}/{s}")
            for i, (b, t) in enumerate(sizes) for s in range(seeds)]


def greedy(logits_of: Callable[[np.ndarray], np.ndarray], prompts: np.ndarray, steps: int) -> np.ndarray:
    """Greedy continuation (P, steps), re-running the whole sequence each step."""
    ids = prompts
    for _ in range(steps):
        nxt = logits_of(ids)[:, -1].argmax(-1)  # (P,)
        ids = np.concatenate([ids, nxt[:, None].astype(ids.dtype)], axis=1)
    return ids[:, prompts.shape[1]:]


def shakespeare_prompts(count: int, length: int = 24) -> np.ndarray:
    """``count`` windows of the corpus' held-out tail, as byte ids (P, length)."""
    from forgeline.train.data import load_corpus

    val = load_corpus(None).val.numpy()
    starts = np.random.default_rng(HELD_OUT_SEED).integers(0, len(val) - length, count)
    return np.stack([val[s:s + length] for s in starts]).astype(np.int64)


def greedy_agreement(root: Path, runners: dict, prompts: np.ndarray, steps: int) -> dict:
    import torch

    from forgeline.define import load_checkpoint
    from forgeline.export.eager import run_eager
    from forgeline.runtime.format import WEIGHTS_FILE

    eager = load_checkpoint(root / WEIGHTS_FILE).eval()

    def eager_logits(ids):
        with torch.no_grad():
            return run_eager(eager, {"input_ids": ids})["logits"]

    want = greedy(eager_logits, prompts, steps)
    found = {}
    for label, run in runners.items():
        if callable(run):
            got = greedy(lambda ids, run=run: np.asarray(run({"input_ids": ids})["logits"]), prompts, steps)
            same = got == want  # (P, steps)
            prefix = min(int(np.argmin(r)) if not r.all() else steps for r in same)
            found[label] = {"greedy_identical": float(same.mean()), "greedy_min_prefix": prefix}
    return found


# -- report ------------------------------------------------------------------------------------

def markdown(report: dict, steps: int) -> str:
    lines = ["| model | backend | max abs (logits) | top-1 | routing flips | greedy identical | min identical prefix |",
             "|---|---|---|---|---|---|---|"]
    for model, rows in report.items():
        for label, row in rows.items():
            if "error" in row:
                lines.append(f"| {model} | {label} | {row['error']} | | | | |")
                continue
            top1 = "–" if row.get("top1") is None else f"{row['top1']:.2%}"
            flips = f"{row['routing_flips']} of {row['routing_decisions']}" if row.get("routing_decisions") else "–"
            greedy_cell = f"{row['greedy_identical']:.1%}" if "greedy_identical" in row else "–"
            prefix = f"{row['greedy_min_prefix']} of {steps}" if "greedy_min_prefix" in row else "–"
            lines.append(f"| {model} | {label} | {row['max_abs']:.1e} | {top1} | {flips} | {greedy_cell} | {prefix} |")
    return "\n".join(lines)


def measure(root: Path, sizes, seeds: int, work: Path) -> tuple[dict, dict]:
    cases = held_out_cases(root, sizes, seeds)
    runners = backends(root, work / f"{root.name}-peers")
    rows = {label: (compare(cases, run) if callable(run) else {"error": run}) for label, run in runners.items()}
    return rows, runners


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = _args(argv)
    from forgeline.bench.precisions import parse_precisions
    from forgeline.bench.timing import host_info

    precisions = parse_precisions(args.precisions)
    kernels = tuple(k for k in args.bf16_kernels.split(",") if k)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in [m for m in args.models.split(",") if m]:
        root = build(name, args.preset, args.work_dir / f"{name}-{args.preset}", precisions, kernels)
        report[f"{name}-{args.preset}"], _ = measure(root, sizes, args.seeds, args.work_dir)
    if args.train_steps:
        ckpt = train_shakespeare(args.work_dir, args.train_steps, args.train_preset)
        root = build("gpt", args.train_preset, args.work_dir / f"{SHAKESPEARE}-{args.train_preset}-{args.train_steps}",
                     precisions, kernels, weights=ckpt)
        trained_sizes = [(b, min(t, 64 if args.train_preset == "tiny" else t)) for b, t in sizes]
        rows, runners = measure(root, trained_sizes, args.seeds, args.work_dir)
        for label, extra in greedy_agreement(root, runners, shakespeare_prompts(args.prompts), args.generate).items():
            rows[label].update(extra)
        report[f"{SHAKESPEARE} ({args.train_steps} steps)"] = rows
    table = markdown(report, args.generate)
    host = host_info()
    print(f"{host['cpu']}, {host['cores']} cores; held-out inputs {args.sizes} x {args.seeds} seeds\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_accuracy.json").write_text(json.dumps({"host": host, "report": report}, indent=1) + "\n")
    (args.out / "precision_accuracy.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
