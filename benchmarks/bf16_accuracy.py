"""How far a reduced-precision build is from eager fp32 PyTorch, on fresh held-out inputs.

Per output: max abs and max rel difference (rel on elements above 1e-3, as parity reports it),
top-1 agreement of every ``*logits`` output over its last axis, and routing agreement (share of
``routing.*`` decisions equal to eager fp32). Every TVM build of each artifact that this host
can run is measured, so an fp32 build beside the bf16 one shows the fp32 baseline.

    python benchmarks/bf16_accuracy.py ART [ART ...] [--sizes 1x128 8x128] [--seeds 2]
                                       [--generate 32]

``--generate N``: for gpt artifacts with KV-cache graphs, greedy-generate N tokens from a few
held-out prompts on ONNX Runtime (fp32, within 1e-6 of eager) and on each build, and report how
many leading tokens every prompt keeps identical, and the share of identical tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from forgeline.define import load_checkpoint
from forgeline.export.eager import make_case
from forgeline.runtime.format import ROUTING_PREFIX, WEIGHTS_FILE, Manifest
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.model import load

HELD_OUT_SEED = 5_000  # seeds neither the golden (0..) nor `forgeline check` (1000..) cases use


def _output_rows(name: str, want: np.ndarray, got: np.ndarray) -> dict:
    if name.startswith(ROUTING_PREFIX) or not np.issubdtype(want.dtype, np.floating):
        return {"agreement": float((got == want).mean())}
    diff = np.abs(got.astype(np.float64) - want)
    big = np.abs(want) > 1e-3
    row = {"max_abs": float(diff.max()), "max_rel": float((diff[big] / np.abs(want[big])).max()),
           "scale": float(np.abs(want).max())}
    if name.endswith("logits"):
        row["top1"] = float((got.argmax(-1) == want.argmax(-1)).mean())
    return row


def _merge(total: dict, row: dict) -> None:
    for key, value in row.items():
        better_low = key in ("top1", "agreement")
        total[key] = min(total.get(key, value), value) if better_low else max(total.get(key, value), value)


def measure(root: Path, sizes: list[tuple[int, int]], seeds: int) -> dict:
    manifest = Manifest.load(root)
    eager = load_checkpoint(root / WEIGHTS_FILE)
    cases = [make_case(eager, {"batch": b, "seq": t}, HELD_OUT_SEED + 10 * i + s, f"{b}x{t}/{s}")
             for i, (b, t) in enumerate(sizes) for s in range(seeds)]
    host, result = describe_host(), {}
    for tag, build in manifest.builds.items():
        if build.codegen_only or not can_run(build.requires, host)[0]:
            continue
        model, worst = load(root, target=tag), {}
        for case in cases:
            got = model.run(**case.inputs)
            for name, want in case.outputs.items():
                _merge(worst.setdefault(name, {}), _output_rows(name, want, got[name]))
        result[f"{tag} ({build.precision})"] = worst
    return result


def generation_agreement(root: Path, new_tokens: int, prompts: int = 4, prompt_len: int = 16) -> dict:
    """Greedy continuations of each build against ONNX Runtime's (fp32)."""
    manifest = Manifest.load(root)
    if manifest.family != "gpt" or "decode" not in manifest.graphs:
        return {}
    vocab = manifest.config["vocab_size"]
    rng = np.random.default_rng(HELD_OUT_SEED)
    ids = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(prompts)]
    want = load(root, backend="ort").generate(ids, new_tokens).ids  # (P, N)
    host, result = describe_host(), {}
    for tag, build in manifest.builds.items():
        if build.codegen_only or not can_run(build.requires, host)[0] or not build.graph_libs:
            continue
        got = load(root, target=tag).generate(ids, new_tokens).ids
        same = np.asarray(got) == np.asarray(want)  # (P, N)
        leading = [int(np.argmin(row)) if not row.all() else new_tokens for row in same]
        result[f"{tag} ({build.precision})"] = {"min_identical_prefix": min(leading),
                                               "identical_tokens": float(same.mean())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--sizes", nargs="+", default=["1x128", "8x128"])
    parser.add_argument("--seeds", type=int, default=2, help="fresh cases per size")
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens to compare (gpt)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    report = {}
    for root in args.artifacts:
        report[root.name] = measure(root, sizes, args.seeds)
        for build, outputs in report[root.name].items():
            for name, row in outputs.items():
                cells = " ".join(f"{k}={v:.3g}" for k, v in row.items())
                print(f"{root.name:14s} {build:32s} {name:14s} {cells}")
        if args.generate:
            report[root.name]["generation"] = generation_agreement(root, args.generate)
            for build, row in report[root.name]["generation"].items():
                print(f"{root.name:14s} {build:32s} greedy {args.generate} tokens: {row}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
