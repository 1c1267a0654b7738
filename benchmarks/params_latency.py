"""Latency at 1x128 (``--seq``) and greedy decode tokens/s of two artifacts of one model, measured in one run.

Meant for an artifact built with the weights embedded in its libraries (forgeline before the weight
store) against one whose libraries take them from ``params.safetensors``: both load in this
forgeline's runtime, and their calls are interleaved round by round so that the machine's state
affects both alike. Prints medians and writes JSON.

    python benchmarks/scale.py --models base --keep --work /tmp/after      # or any two builds
    python benchmarks/params_latency.py /tmp/before/base /tmp/after/base --rounds 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs=2, type=Path, help="two artifact folders of the same model")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seq", type=int, default=128, help="sequence length of the latency measurement")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens of the decode measurement")
    p.add_argument("--new", type=int, default=32, help="new tokens of the decode measurement")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "params_latency.json")
    return p.parse_args(argv)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> int:
    import forgeline.runtime as rt

    args = _args(argv)
    models = [rt.load(path, backend="tvm") for path in args.artifacts]
    ids = np.random.default_rng(0).integers(0, 256, (1, args.seq), dtype=np.int64)
    prompt = [int(t) for t in ids[0, :args.prompt]]
    forward = {str(p): [] for p in args.artifacts}
    decode = {str(p): [] for p in args.artifacts}
    for model in models:  # warm-up: page faults, thread pools, first-call work
        model.run(input_ids=ids)
        model.generate(prompt, max_new_tokens=2)
    for _ in range(args.rounds):
        for path, model in zip(args.artifacts, models):
            forward[str(path)].append(_timed(lambda: model.run(input_ids=ids)))
            seconds = _timed(lambda: model.generate(prompt, max_new_tokens=args.new))
            decode[str(path)].append(args.new / seconds)
    result = {str(p): {"latency_ms": 1e3 * statistics.median(forward[str(p)]),
                       "generate_tokens_per_s": statistics.median(decode[str(p)])} for p in args.artifacts}
    for path, row in result.items():
        print(f"{path}: 1x{args.seq} {row['latency_ms']:.2f} ms, generate {row['generate_tokens_per_s']:.1f} tokens/s "
              f"(prompt {args.prompt}, {args.new} new, greedy, prefill included)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "seq": args.seq, "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
