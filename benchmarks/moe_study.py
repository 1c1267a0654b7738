"""Expert choice against token choice at small scale, on the shipped corpus.

Zhou et al. 2022 (expert-choice routing) report that at equal compute, expert choice with
capacity factor 2 reaches the perplexity of GShard top-2 token choice in less than half the
steps, with no auxiliary loss. This script trains, per family and per seed, five models with the same
initialisation seed, data order (batches are a function of (seed, step)), step count and *active*
FFN parameters per token:

    dense      one FFN of width F
    ec-cf1     expert choice, capacity factor 1: ~1 expert per token, experts of width F
    ec-cf2     expert choice, capacity factor 2: ~2 experts per token, experts of width F/2
    tc-top1    token choice top-1 (Switch), capacity factor 1.25, aux loss 0.01, width F
    tc-top2    token choice top-2 (GShard), capacity factor 1.25, aux loss 0.01, width F/2

Families: BERT-MoE with MLM (no NSP; a routing group is one sequence) and GPT-MoE with the causal
grouping (a group is one position across the batch). It reports, over the seeds, the held-out loss
per evaluation (mean and range), the step at which each router first reaches the dense model's
final held-out loss of the same seed, wall time per step, and load balance at the end (tokens per
expert, experts per token, dropped tokens).

forgeline's MoE layers dispatch sparsely (each expert runs only on the tokens it took, see
define/moe.py), so wall time per step tracks the active compute, not the number of experts.

    python benchmarks/moe_study.py                 # full study: 3 seeds, about 45 minutes on an idle 2-core machine
    python benchmarks/moe_study.py --quick --seeds 0   # a ~1 minute check of the whole pipeline
Writes benchmarks/results/moe_study-<host>-fp32-<date>.json, docs/moe_study.png and docs/moe_study.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from forgeline.define import build_model, routing_stats
from forgeline.train.data import load_corpus
from forgeline.train.trainer import Trainer, TrainOptions, training_config

log = logging.getLogger("moe_study")
ROOT = Path(__file__).resolve().parents[1]
from result_names import RESULTS_DIR, result_stem  # noqa: E402 - benchmarks/ is on sys.path when a script runs


@dataclass(frozen=True)
class Scale:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int  # dense FFN width F; experts are F (1 expert/token) or F/2 (2 experts/token)
    n_experts: int
    seq_len: int
    batch_size: int
    steps: int
    eval_every: int
    eval_batches: int
    lr: float
    warmup_steps: int


# The `small` preset (d_model 256, d_ff 1024, seq 256) trimmed so that thirty runs (2 families x 5
# routers x 3 seeds) fit under an hour on 2 cores: d_model 128, dense FFN width 256, seq 64, 16 experts,
# 400 steps; vocab 8000 -> 264 (bytes) as in all training. Every layer is MoE (moe_every=1): the config
# has one d_ff, and this way the experts' width is the only width that changes between variants.
# The first study (one seed, 8 experts, 250 steps) ran before dispatch was sparse.
FULL = Scale(d_model=128, n_layers=4, n_heads=4, d_ff=256, n_experts=16, seq_len=64, batch_size=16,
             steps=400, eval_every=25, eval_batches=4, lr=2e-3, warmup_steps=25)
QUICK = Scale(d_model=64, n_layers=2, n_heads=2, d_ff=128, n_experts=4, seq_len=64, batch_size=8,
              steps=60, eval_every=20, eval_batches=2, lr=2e-3, warmup_steps=10)

# name -> (router settings, experts each token uses on average, for the expert width)
VARIANTS = {
    "dense": (dict(router="none"), 1),
    "ec-cf1": (dict(router="expert_choice", capacity_factor=1.0), 1),
    "ec-cf2": (dict(router="expert_choice", capacity_factor=2.0), 2),
    "tc-top1": (dict(router="token_choice", router_top_k=1, capacity_factor=1.25), 1),
    "tc-top2": (dict(router="token_choice", router_top_k=2, capacity_factor=1.25), 2),
}
COLORS = {"dense": "black", "ec-cf1": "tab:cyan", "ec-cf2": "tab:blue", "tc-top1": "tab:orange", "tc-top2": "tab:red"}
FAMILIES = {"bert-moe": "MLM (15% / 80-10-10), groups = one sequence",
            "gpt-moe": "causal LM, groups = one position across the batch"}


def variant_config(family_name: str, variant: str, scale: Scale):
    settings, experts_per_token = VARIANTS[variant]
    return training_config(family_name, "small", d_model=scale.d_model, n_layers=scale.n_layers,
                           n_heads=scale.n_heads, d_ff=scale.d_ff // experts_per_token, n_experts=scale.n_experts,
                           max_positions=scale.seq_len, moe_every=1, **settings)


def active_parameters(model, experts_per_token: float) -> int:
    """Parameters one token passes through: all, less the experts it does not use (on average)."""
    total = sum(p.numel() for p in model.parameters())
    for moe in model.moe_layers():
        per_expert = sum(p.numel() for p in moe.experts.parameters()) / moe.n_experts
        total -= (moe.n_experts - experts_per_token) * per_expert
    return int(round(total))


def run_variant(family_name: str, variant: str, scale: Scale, corpus, seed: int) -> dict:
    config = variant_config(family_name, variant, scale)
    options = TrainOptions(steps=scale.steps, batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.lr,
                           warmup_steps=scale.warmup_steps, eval_every=scale.eval_every,
                           eval_batches=scale.eval_batches, nsp=False, seed=seed)
    trainer = Trainer(build_model(config, seed=seed), corpus, options)
    val, step_seconds = [(0, trainer.evaluate().loss)], []
    while trainer.step < scale.steps:
        t0 = time.perf_counter()
        trainer.train_step()
        step_seconds.append(time.perf_counter() - t0)
        if trainer.step % scale.eval_every == 0 or trainer.step == scale.steps:
            result = trainer.evaluate()
            val.append((trainer.step, result.loss))
            log.info("%s %s step %d/%d: val loss %.4f (%.3f s/step)", family_name, variant, trainer.step,
                     scale.steps, result.loss, float(np.mean(step_seconds)))
    settings, experts_per_token = VARIANTS[variant]
    return {
        "variant": variant, "config": config.to_dict(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "active_parameters": active_parameters(trainer.model, experts_per_token),
        "val": val, "train": trainer.history["train"],
        "final_loss_std_error": float(np.std(result.batch_losses, ddof=1) / math.sqrt(len(result.batch_losses)))
        if len(result.batch_losses) > 1 else None,
        "seconds_per_step": float(np.median(step_seconds[1:] or step_seconds)),
        "routing": routing_summary(result, config),
    }


def routing_summary(result, config) -> list[dict]:
    """Per MoE layer, over the held-out batches: load per expert, experts per token, dropped tokens."""
    if not result.routing:
        return []
    stats = routing_stats([r.numpy() for r in result.routing],
                          None if result.token_mask is None else result.token_mask.numpy())
    layers = []
    for layer, raw in zip(stats.layers, result.routing):
        n = max(layer.n_tokens, 1)
        share = layer.tokens_per_expert / layer.tokens_per_expert.sum()
        entry = {"tokens_per_expert": layer.tokens_per_expert.tolist(),
                 "expert_share_max_over_mean": float(share.max() * len(share)),
                 "experts_per_token": layer.experts_per_token.tolist(),
                 "mean_experts_per_token": float((np.arange(len(layer.experts_per_token)) * layer.experts_per_token).sum() / n),
                 "tokens_with_no_expert": layer.unprocessed_fraction}
        if config.router == "token_choice":
            # A token asks for top_k experts; a choice is dropped when its expert is already full.
            entry["dropped_choices"] = 1.0 - float(raw.sum()) / (n * config.router_top_k)
        layers.append(entry)
    return layers


def reach_step(curve: list, target: float) -> int | None:
    """First evaluated step whose held-out loss is at or below target (None: never)."""
    return next((step for step, loss in curve if loss <= target), None)


def run_study(scale: Scale, seeds: list[int], families: list[str]) -> dict:
    """results["families"][family]["seeds"][str(seed)][variant] is one training run."""
    corpus = load_corpus()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "scale": asdict(scale), "seeds": seeds, "families": {}}
    started = time.perf_counter()
    for family_name in families:
        per_seed = {}
        for seed in seeds:
            runs = {v: run_variant(family_name, v, scale, corpus, seed) for v in VARIANTS}
            dense_final = runs["dense"]["val"][-1][1]  # each router is compared with its own seed's dense
            for run in runs.values():
                run["reaches_dense_final_at"] = reach_step(run["val"], dense_final)
            per_seed[str(seed)] = runs
        results["families"][family_name] = {"objective": FAMILIES[family_name], "seeds": per_seed}
    results["total_seconds"] = time.perf_counter() - started
    return results


def seed_runs(fam: dict, variant: str) -> list[dict]:
    """One variant's runs, one per seed, in seed order."""
    return [runs[variant] for runs in fam["seeds"].values()]


def final_losses(fam: dict, variant: str) -> np.ndarray:
    return np.array([run["val"][-1][1] for run in seed_runs(fam, variant)])


def loss_curves(fam: dict, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, held-out loss (seeds, evals)); every seed evaluates at the same steps."""
    curves = np.array([[loss for _, loss in run["val"]] for run in seed_runs(fam, variant)])
    return np.array([step for step, _ in seed_runs(fam, variant)[0]["val"]]), curves


def gap_to_dense(fam: dict, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of loss - the same seed's dense loss at the same step.

    A seed changes the initialisation, the data order and so the loss level by more than the routers
    differ; pairing each run with its own seed's dense run removes that shared part.
    """
    steps, curves = loss_curves(fam, variant)
    gap = curves - loss_curves(fam, "dense")[1]  # (seeds, evals)
    return steps, gap.mean(0), gap.min(0), gap.max(0)


def routing_layers(fam: dict, variant: str) -> list[dict]:
    """Every MoE layer's routing summary, over all seeds."""
    return [layer for run in seed_runs(fam, variant) for layer in run["routing"]]


def machine() -> dict:
    return {"platform": platform.platform(), "processor": _cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()[0]}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------------------ report


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results["families"])
    fig, axes = plt.subplots(2, len(families), figsize=(6.5 * len(families), 8.5), squeeze=False)
    for col, family_name in enumerate(families):
        fam = results["families"][family_name]
        ax = axes[0][col]
        for name in VARIANTS:
            steps, mean, low, high = (a[1:] for a in gap_to_dense(fam, name))
            ax.plot(steps, mean, marker="o", markersize=3, label=name, color=COLORS[name],
                    linestyle="--" if name == "dense" else "-")
            ax.fill_between(steps, low, high, color=COLORS[name], alpha=0.12, linewidth=0)
        ax.set_title(f"{family_name}: {results['families'][family_name]['objective']}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"held-out loss - same seed's dense (nats / byte)\nmean and range over {len(fam['seeds'])} seeds",
                      fontsize=8)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        moe = [n for n in VARIANTS if routing_layers(fam, n)]
        width = 0.8 / len(moe)
        for i, name in enumerate(moe):
            share = _hist(fam, name)
            ax.bar(np.arange(len(share)) + (i - (len(moe) - 1) / 2) * width, share, width,
                   label=name, color=COLORS[name])
        ax.set_xlabel("experts processing a token (all MoE layers, held-out batches)")
        ax.set_ylabel("share of tokens")
        ax.legend(fontsize=8)
    fig.suptitle(f"forgeline MoE study, {results['date']}, {results['machine']['processor']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict, command: str, json_path: str) -> str:
    s, m = results["scale"], results["machine"]
    seeds = ", ".join(str(seed) for seed in results["seeds"])
    lines = [
        "# Expert choice vs token choice at small scale",
        "",
        f"Run {results['date']} on {m['processor']} ({m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads, load average {m['load_average_at_start']:.1f} at start), "
        f"{results['total_seconds'] / 60:.1f} min in all. Command: `{command}`. Raw numbers: `{json_path}`.",
        "",
        f"Models: d_model {s['d_model']}, {s['n_layers']} layers (every FFN is the MoE, or dense), {s['n_heads']} heads, "
        f"{s['n_experts']} experts, byte vocabulary (264); dense FFN width {s['d_ff']}, expert width {s['d_ff']} "
        f"(1 expert per token) or {s['d_ff'] // 2} (2 per token), so every variant has the same active FFN "
        f"parameters per token. Training: {s['steps']} steps of {s['batch_size']} x {s['seq_len']} tokens, AdamW, "
        f"lr {s['lr']:g}, {s['warmup_steps']} warmup steps then cosine, seeds {seeds} (a seed fixes the "
        f"initialisation and the data order, the same for every router), held-out loss on {s['eval_batches']} "
        f"fixed batches every {s['eval_every']} steps. Token choice: capacity factor 1.25, load-balancing loss "
        "x 0.01. Expert choice: no auxiliary loss.",
        "",
        "![held-out loss and experts per token](moe_study.png)",
        "",
    ]
    for family_name, fam in results["families"].items():
        lines += _family_table(family_name, fam)
    lines += ["## What the numbers show", "", *summary(results), "",
              "Wall time: forgeline's MoE layers dispatch sparsely (each expert runs only on the tokens "
              "it took), so the seconds per step above follow the active compute; on a shared machine "
              "compare them within one run only.", ""]
    return "\n".join(lines)


def _family_table(family_name: str, fam: dict) -> list[str]:
    lines = [f"## {family_name}: {fam['objective']}", "",
             "| router | params (active) | final held-out loss, mean ± sd over seeds | per seed | "
             "minus its seed's dense, mean [min, max] | reaches its seed's dense final at step | s/step | "
             "max/mean expert load | experts/token | tokens with no expert | token choices dropped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        runs, r = seed_runs(fam, name), routing_layers(fam, name)
        losses = final_losses(fam, name)
        mean = lambda key: (f"{np.mean([layer[key] for layer in r]):.2f}" if r else "-")  # noqa: E731
        pct = lambda key: (f"{100 * np.mean([layer[key] for layer in r]):.1f}%" if r and key in r[0] else "-")  # noqa: E731
        reach = ", ".join(_reach_text(run["reaches_dense_final_at"]) for run in runs)
        gap = losses - final_losses(fam, "dense")
        lines.append(f"| {name} | {runs[0]['parameters'] / 1e6:.2f}M ({runs[0]['active_parameters'] / 1e6:.2f}M) | "
                     f"{losses.mean():.4f} ± {_sd(losses):.4f} | {', '.join(f'{x:.3f}' for x in losses)} | "
                     f"{gap.mean():+.4f} [{gap.min():+.4f}, {gap.max():+.4f}] | {reach} | "
                     f"{np.median([run['seconds_per_step'] for run in runs]):.3f} | "
                     f"{mean('expert_share_max_over_mean')} | {mean('mean_experts_per_token')} | "
                     f"{pct('tokens_with_no_expert')} | {pct('dropped_choices')} |")
    columns = len(_hist(fam, "ec-cf1"))
    lines += ["", "Experts per token (share of held-out tokens processed by 0, 1, 2, ... experts, all MoE layers "
              "and seeds):", "", "| router | " + " | ".join(str(i) for i in range(columns)) + " |",
              "|---|" + "---|" * columns]
    for name in (n for n in VARIANTS if routing_layers(fam, n)):
        lines.append(f"| {name} | " + " | ".join(f"{100 * x:.1f}%" for x in _hist(fam, name)) + " |")
    return lines + [""]


def _reach_text(step: int | None) -> str:
    return "never" if step is None else str(step)


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _hist(fam: dict, name: str) -> np.ndarray:
    counts = np.sum([layer["experts_per_token"] for layer in routing_layers(fam, name)], axis=0)
    return counts / counts.sum()


def summary(results: dict) -> list[str]:
    """Plain sentences from the numbers: the paper's claim, checked per family and seed."""
    out = []
    for family_name, fam in results["families"].items():
        n = len(fam["seeds"])
        ec_at = [run["reaches_dense_final_at"] for run in seed_runs(fam, "ec-cf2")]
        tc_at = [run["reaches_dense_final_at"] for run in seed_runs(fam, "tc-top2")]
        ec, tc = final_losses(fam, "ec-cf2"), final_losses(fam, "tc-top2")
        halves = sum(e is not None and (t is None or e <= t / 2) for e, t in zip(ec_at, tc_at))
        sooner = sum(e is not None and (t is None or e < t) for e, t in zip(ec_at, tc_at))
        later = sum(t is not None and (e is None or t < e) for e, t in zip(ec_at, tc_at))
        out.append(
            f"- **{family_name}**: steps to reach the same seed's dense final loss, EC-CF2 "
            f"{', '.join(map(_reach_text, ec_at))} vs GShard top-2 {', '.join(map(_reach_text, tc_at))}: "
            f"EC-CF2 first in {sooner} of {n} seeds (in half the steps or less in {halves}), top-2 first in {later}. "
            f"Final held-out loss EC-CF2 {ec.mean():.4f} ± {_sd(ec):.4f} vs top-2 {tc.mean():.4f} ± {_sd(tc):.4f} "
            f"(paired EC-CF2 - top-2: {(ec - tc).mean():+.4f}, EC lower in {int((ec < tc).sum())} of {n} seeds); EC-CF1 {final_losses(fam, 'ec-cf1').mean():.4f} vs "
            f"Switch top-1 {final_losses(fam, 'tc-top1').mean():.4f}; dense {final_losses(fam, 'dense').mean():.4f}.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and 60 steps (~2 min): checks the pipeline")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each trains every router once")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of bert-moe,gpt-moe")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / f"{result_stem('moe_study')}.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/moe_study.png")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/moe_study.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    results = run_study(QUICK if args.quick else FULL, seeds, args.families.split(","))
    for path in (args.json, args.plot, args.doc):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    plot(results, args.plot)
    command = "python benchmarks/moe_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    json_name = str(args.json.relative_to(ROOT)) if args.json.is_relative_to(ROOT) else str(args.json)
    args.doc.write_text(markdown(results, command.strip(), json_name))
    print("\n".join(summary(results)))
    print(f"wrote {args.json}, {args.plot}, {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
