"""How MoE latency scales with the number of experts, on every backend.

bert-moe (expert choice) and gpt-moe-tc (GShard top-2 token choice) at the ``small`` sizes,
experts in every other layer, capacity factor 2, E in {4, 8, 16, 32}, plus the dense bert and gpt
of the same sizes. Each model is exported and compiled untuned (the dynamic-shape TVM build), then
eager PyTorch, ONNX Runtime and TVM run at batch 1 x 128 and batch 8 x 128, all in this one
process in interleaved rounds, so every number saw the same mix of machine load. A sparse MoE
layer does about ``capacity_factor`` times a dense FFN's work whatever E is, so its curve should
be flat in E.

Two eager extras: the forward pass of gpt-moe small (expert choice, its preset's 8 experts)
against gpt small, and one bert-moe training step (forward, backward, AdamW) at E = 4 and 32
against dense bert.

    python benchmarks/moe_scaling.py                       # everything, ~15 min on 2 cores
    python benchmarks/moe_scaling.py --experts 4,32 --models bert-moe --shapes 1x128
    python benchmarks/moe_scaling.py --precision bf16 --no-extras   # + tvm-bf16 beside fp32

``--precision bf16`` (or int8) adds that build to every artifact, the dense models' included, and
times it as the backend ``tvm-<precision>`` beside the others, so the last column (E = max against
the dense model) compares like with like; a precision this host cannot run is refused before
anything is built. The MoE criteria at 1x128 (E = 32 against E = 4 and against dense, per
precision) take:

    python benchmarks/moe_scaling.py --models bert-moe,gpt-moe-tc --experts 4,32 --shapes 1x128 \
        --precision bf16 --no-extras            # then the same with --precision int8

Prints a markdown table; writes benchmarks/results/moe_scaling-<host>-fp32-<date>.json and .png. On a
shared machine read the ratios within one run, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("moe_scaling")
from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs
DENSE = {"bert-moe": "bert", "gpt-moe-tc": "gpt", "gpt-moe": "gpt"}  # the dense model of each family
BACKENDS = ("eager", "ort", "tvm")


@dataclass
class Case:
    """One timed thing: a model at a size on a backend at a shape, and its samples in ms."""

    model: str  # a forgeline model name
    experts: int  # 0 = the dense model
    backend: str  # eager | ort | tvm | train (eager training step)
    shape: tuple[int, int]  # (batch, seq)
    run: Callable[[], object] = field(repr=False)
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """The fastest sample: on a heavily shared machine, the closest to the quiet-machine time."""
        return min(self.samples)

    def key(self) -> str:
        return f"{self.model}/E={self.experts}/{self.backend}/{self.shape[0]}x{self.shape[1]}"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bert-moe,gpt-moe-tc", help="comma-separated MoE model names")
    p.add_argument("--experts", default="4,8,16,32", help="comma-separated expert counts")
    p.add_argument("--shapes", default="1x128,8x128", help="comma-separated BATCHxSEQ")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--capacity-factor", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--iters", type=int, default=3, help="timed runs per case per round")
    p.add_argument("--no-extras", action="store_true", help="skip the eager gpt-moe and training-step extras")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/moe_scaling"), help="artifacts (reused when present)")
    p.add_argument("--build-only", action="store_true", help="export and compile the artifacts, time nothing")
    p.add_argument("--preset", default="small", help="model sizes (tiny: a quick check of the script)")
    p.add_argument("--precision", default="fp32",
                   help="also build and time this precision (bf16, int8) as backend tvm-<precision>")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. 'before: dense MoE')")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def _overrides(experts: int, capacity_factor: float) -> dict:
    return {} if experts == 0 else dict(n_experts=experts, capacity_factor=capacity_factor, moe_every=2)


def build_artifact(name: str, experts: int, capacity_factor: float, work: Path, precision: str = "fp32",
                   preset: str = "small") -> Path:
    """Export + compile (untuned, CPU) ``name`` at the small sizes with ``experts`` experts, and a
    ``precision`` build beside the fp32 one."""
    out = _fp32_artifact(name, experts, capacity_factor, work, preset)
    if precision != "fp32":
        from forgeline.compile import CompileOptions, compile_artifact
        from forgeline.runtime.format import Manifest

        if not any(b.precision == precision for b in Manifest.load(out).builds.values()):
            compile_artifact(out, CompileOptions(target="cpu", precision=precision))
    return out


def _fp32_artifact(name: str, experts: int, capacity_factor: float, work: Path, preset: str) -> Path:
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.define import build_model, get_config, save_checkpoint
    from forgeline.export import ExportOptions, export_model
    from forgeline.runtime.format import Manifest

    out = work / f"{name}-E{experts}" if preset == "small" else work / f"{name}-{preset}-E{experts}"
    config = get_config(name, preset, **_overrides(experts, capacity_factor))
    if (out / "manifest.json").is_file() and Manifest.load(out).config == config.to_dict() and Manifest.load(out).builds:
        log.info("reusing %s", out)
        return out
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = out.with_suffix(".safetensors")
    save_checkpoint(build_model(config), checkpoint)
    started = time.perf_counter()
    export_model(name, out, ExportOptions(preset=preset, weights=checkpoint, overwrite=True, generation_graphs=False))
    compile_artifact(out, CompileOptions(target="cpu"))
    log.info("built %s in %.0f s", out, time.perf_counter() - started)
    return out


def artifact_cases(root: Path, name: str, experts: int, shapes, backends) -> list[Case]:
    from forgeline.bench import BenchOptions, bench_inputs
    from forgeline.bench.backends import RUNNERS
    from forgeline.runtime.format import Manifest

    manifest = Manifest.load(root)
    cases = []
    for batch, seq in shapes:
        options = BenchOptions(batch=batch, seq=seq)
        inputs = bench_inputs(manifest, options)
        for backend in backends:
            run = RUNNERS[backend](root, manifest, inputs, options)
            cases.append(Case(name, experts, backend, (batch, seq), run))
    return cases


def eager_forward_case(name: str, shape: tuple[int, int]) -> Case:
    """gpt / gpt-moe at their own small preset (gpt-moe: 8 experts, capacity factor 2)."""
    import torch

    from forgeline.define import build_model, get_config

    model = build_model(get_config(name, "small"))
    batch, seq = shape
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            model(ids)

    return Case(name, model.config.n_experts if model.config.router != "none" else 0, "eager", shape, run)


def train_step_case(name: str, experts: int, capacity_factor: float, shape: tuple[int, int]) -> Case:
    """One BERT MLM training step: forward, backward and AdamW, on random tokens."""
    import torch

    from forgeline.define import build_model, get_config
    from forgeline.train.trainer import TrainOptions, adamw_optimizer, forward_loss

    model = build_model(get_config(name, "small", **_overrides(experts, capacity_factor))).train()
    options = TrainOptions(nsp=False)
    optimizer = adamw_optimizer(model, options)
    batch, seq = shape
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    data = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
            "labels": labels}

    def run():
        loss = forward_loss(model, data, options).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Case(name, experts, "train", shape, run)


def time_interleaved(cases: list[Case], rounds: int, iters: int) -> None:
    """Rounds over every case; in each, one untimed run (other pools go idle) then ``iters`` timed."""
    for case in cases:
        case.run()
    for index in range(rounds):
        for case in cases:
            case.run()
            for _ in range(iters):
                started = time.perf_counter()
                case.run()
                case.samples.append((time.perf_counter() - started) * 1e3)
        log.info("round %d/%d", index + 1, rounds)


def table(cases: list[Case], experts: list[int], stat: str = "median") -> str:
    """Markdown: one row per (model, backend, shape), one column per E, then the dense model."""
    by_key = {(c.model, c.backend, c.shape, c.experts): getattr(c, stat) for c in cases}
    rows = sorted({(c.model, c.backend, c.shape) for c in cases if c.model in DENSE and c.experts in experts})
    head = ("| model | backend | batch x seq | " + " | ".join(f"E = {e}" for e in experts)
            + " | dense | E=max / E=min | E=max / dense |")
    lines = [head, "|" + "---|" * (len(experts) + 6)]
    for model, backend, shape in rows:
        values = [by_key.get((model, backend, shape, e)) for e in experts]
        dense = by_key.get((DENSE[model], backend if backend != "train" else "train", shape, 0))
        cells = [f"{v:.1f}" if v is not None else "-" for v in values]
        ratio = f"{values[-1] / values[0]:.2f}x" if values[0] and values[-1] else "-"
        dense_cell = f"{DENSE[model]} {dense:.1f}" if dense else "-"
        # the dense model on the same backend, so at the same precision (tvm-bf16 beside tvm-bf16)
        vs_dense = f"{values[-1] / dense:.2f}x" if dense and values[-1] else "-"
        lines.append(f"| {model} | {backend} | {shape[0]}x{shape[1]} | " + " | ".join(cells)
                     + f" | {dense_cell} | {ratio} | {vs_dense} |")
    return "\n".join(lines)


def plot(cases: list[Case], experts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(c.model, c.shape) for c in cases
                     if c.model in DENSE and c.model != "gpt-moe" and c.experts and c.backend != "train"})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (model, shape) in zip(axes[0], panels):
        timed = [*BACKENDS, *sorted({c.backend for c in cases} - set(BACKENDS) - {"train"})]  # + tvm-<precision>
        for color, backend in zip(("tab:green", "tab:blue", "tab:red", "tab:purple", "tab:orange"), timed):
            points = sorted((c.experts, c.median) for c in cases
                            if (c.model, c.shape, c.backend) == (model, shape, backend) and c.experts)
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=backend)
            dense = [c.median for c in cases if (c.model, c.shape, c.backend, c.experts) == (DENSE[model], shape, backend, 0)]
            if dense:
                ax.axhline(dense[0], color=color, linestyle="--", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(experts, [str(e) for e in experts])
        ax.set_xlabel("experts E (dashed: dense model)")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{model}, {shape[0]}x{shape[1]}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect_cases(args, experts, shapes, backends) -> list[Case]:
    cases: list[Case] = []
    models = [m for m in args.models.split(",") if m]
    for name in models + sorted({DENSE[m] for m in models}):
        for e in (experts if name in DENSE else [0]):
            root = build_artifact(name, e, args.capacity_factor, args.work_dir, args.precision, args.preset)
            cases += artifact_cases(root, name, e, shapes, backends)
    if not (args.no_extras or args.build_only):
        cases += [eager_forward_case(name, shape) for name in ("gpt", "gpt-moe") for shape in shapes]
        train_shape = (8, 128)
        cases += [train_step_case("bert-moe", e, args.capacity_factor, train_shape) for e in (4, 32)]
        cases.append(train_step_case("bert", 0, args.capacity_factor, train_shape))
    return cases


def _check_precision(precision: str) -> None:
    """Refuse a precision forgeline lacks, or this host's CPU cannot run, before any build."""
    from forgeline.compile import CompileOptions
    from forgeline.compile.artifact import resolve_precision_target

    resolve_precision_target(CompileOptions(target="cpu", precision=precision))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = _args(argv)
    experts = [int(e) for e in args.experts.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    if args.precision != "fp32":
        _check_precision(args.precision)
        backends.append(f"tvm-{args.precision}")
    cases = collect_cases(args, experts, shapes, [] if args.build_only else backends)
    if args.build_only:
        return 0
    time_interleaved(cases, args.rounds, args.iters)
    from forgeline.bench import host_info

    text = "median ms\n\n" + table(cases, experts) + "\n\nfastest sample ms\n\n" + table(cases, experts, "best")
    extras = [c for c in cases if c.backend == "train" or (c.backend == "eager" and c.model in ("gpt", "gpt-moe"))]
    text += "\n\n" + "\n".join(f"- {c.key()}: median {c.median:.1f} ms, fastest {c.best:.1f} ms" for c in extras)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(f"moe_scaling-{args.models.replace(',', '-')}", args.precision or "fp32", folder=args.out)  # the label is stored in the file, not in its name
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host_info(),
              "label": args.label, "capacity_factor": args.capacity_factor, "rounds": args.rounds,
              "iters": args.iters, "table": text,
              "cases": [{"key": c.key(), "model": c.model, "experts": c.experts, "backend": c.backend,
                         "shape": list(c.shape), "median_ms": c.median, "best_ms": c.best, "samples_ms": [round(s, 3) for s in c.samples]}
                        for c in cases]}
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(cases, experts, args.out / f"{stem}.png")
    log.info("wrote %s.json and %s.png in %s", stem, stem, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
