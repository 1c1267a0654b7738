"""A Mixtral-style checkpoint (E=8, top-2) beside a dense Llama of the same width, both imported
from Hugging Face folders with ``--from-hf`` and compiled for this CPU.

The two share every size (hidden, layers, heads, KV heads, FFN width = each expert's width); the
Mixtral's FFN is 8 SwiGLU experts with a top-2 router. Sparse dispatch should make a Mixtral
layer cost about 2 dense FFNs plus the router, not 8: the ratio printed is Mixtral / Llama
latency, TVM and ONNX Runtime, at batch 1 x 128 and 8 x 128, timed in interleaved rounds in one
process (ONNX Runtime keeps the padded (E, M) expert block, so its ratio grows with E).

    python benchmarks/moe_checkpoints.py                      # small sizes, ~5 min on 2 cores
    python benchmarks/moe_checkpoints.py --size tiny --rounds 2   # a quick check that it runs

The checkpoints are made with `transformers` (seeded random weights), which this script, unlike
forgeline, needs. Prints a markdown table; writes benchmarks/results/moe_checkpoints-llama-mixtral-<size>-<host>-fp32-<date>.json
(not at tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs

SIZES = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=160),
    "small": dict(vocab_size=8000, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1408, max_position_embeddings=256),
}


def make_checkpoints(size: str, root: Path) -> dict[str, Path]:
    """save_pretrained folders of a LlamaForCausalLM and a MixtralForCausalLM of the same sizes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    common = dict(SIZES[size], bos_token_id=None, eos_token_id=None)
    models = {
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)),
        "mixtral": transformers.MixtralForCausalLM(
            transformers.MixtralConfig(**common, num_local_experts=8, num_experts_per_tok=2)),
    }
    folders = {}
    for name, model in models.items():
        torch.manual_seed(0)
        model.apply(model._init_weights)
        folders[name] = root / f"hf-{name}"
        model.save_pretrained(folders[name])
    return folders


def build(folder: Path, out: Path) -> Path:
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    export_model(None, out, ExportOptions(from_hf=folder, generation_graphs=False))
    compile_artifact(out)
    return out


def time_all(artifacts: dict[str, Path], shapes: list[tuple[int, int]], rounds: int, vocab: int) -> dict:
    """{(model, backend, shape): [ms per run]}, interleaved so every case sees the same load."""
    from forgeline.runtime import load

    models = {(name, backend): load(path, backend=backend) for name, path in artifacts.items()
              for backend in ("tvm", "ort")}
    rng = np.random.default_rng(0)
    feeds = {shape: rng.integers(0, vocab, size=shape, dtype=np.int64) for shape in shapes}
    samples: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for (name, backend), model in models.items():
            for shape in shapes:
                model.run(input_ids=feeds[shape])  # warm
                start = time.perf_counter()
                model.run(input_ids=feeds[shape])
                samples.setdefault((name, backend, shape), []).append(1e3 * (time.perf_counter() - start))
    for model in models.values():
        model.close()
    return samples


def report(samples: dict, shapes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    print("| backend | shape | llama ms | mixtral E=8 top-2 ms | ratio |")
    print("|---|---|---|---|---|")
    for backend in ("tvm", "ort"):
        for shape in shapes:
            dense = statistics.median(samples[("llama", backend, shape)])
            moe = statistics.median(samples[("mixtral", backend, shape)])
            rows.append(dict(backend=backend, shape=f"{shape[0]}x{shape[1]}", llama_ms=dense, mixtral_ms=moe,
                             ratio=moe / dense))
            print(f"| {backend} | {shape[0]}x{shape[1]} | {dense:.2f} | {moe:.2f} | {moe / dense:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--shapes", default="1x128,8x128", help="batch x seq, comma-separated")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--work", type=Path, help="folder for the checkpoints and artifacts (default: a temp folder)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        folders = make_checkpoints(args.size, root)
        artifacts = {name: build(folder, root / f"{name}-artifact") for name, folder in folders.items()}
        rows = report(time_all(artifacts, shapes, args.rounds, SIZES[args.size]["vocab_size"]), shapes)
    if args.size != "tiny":  # tiny only checks that the script runs
        RESULTS_DIR.mkdir(exist_ok=True)
        stem = result_stem(f"moe_checkpoints-llama-mixtral-{args.size}")  # fp32: the checkpoints' precision
        (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(dict(size=args.size, rows=rows), indent=2))


if __name__ == "__main__":
    main()
