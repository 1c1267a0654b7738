"""Expert choice against token choice at small scale, on the shipped corpus.

Zhou et al. 2022 (expert-choice routing) report that at equal compute, expert choice with
capacity factor 2 reaches the perplexity of GShard top-2 token choice in less than half the
steps, with no auxiliary loss. This script trains, per family, five models with the same seed,
data order (batches are a function of (seed, step)), step count and *active* FFN parameters per
token:

    dense      one FFN of width F
    ec-cf1     expert choice, capacity factor 1: ~1 expert per token, experts of width F
    ec-cf2     expert choice, capacity factor 2: ~2 experts per token, experts of width F/2
    tc-top1    token choice top-1 (Switch), capacity factor 1.25, aux loss 0.01, width F
    tc-top2    token choice top-2 (GShard), capacity factor 1.25, aux loss 0.01, width F/2

Families: BERT-MoE with MLM (no NSP; a routing group is one sequence) and GPT-MoE with the causal
grouping (a group is one position across the batch). It reports held-out loss per evaluation, the
step at which each router first reaches the dense model's final held-out loss, wall time per step,
and load balance at the end (tokens per expert, experts per token, dropped tokens).

forgeline's MoE layers dispatch sparsely (each expert runs only on the tokens it took, see
define/moe.py), so wall time per step tracks the active compute, not the number of experts.

    python benchmarks/moe_study.py            # full study, about 20 minutes on an idle 2-core machine
    python benchmarks/moe_study.py --quick    # a ~2 minute check of the whole pipeline
Writes benchmarks/results/moe_study.json, docs/moe_study.png and docs/moe_study.md.
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


# The `small` preset (d_model 256, d_ff 1024, seq 256, 8 experts) trimmed so that ten runs fit about
# 20 minutes on 2 cores (measured when every expert was computed densely): d_model 128, dense FFN width 256,
# seq 64, 8 experts kept; vocab 8000 -> 264 (bytes) as in all training. Every layer is MoE
# (moe_every=1): the config has one d_ff, and this way the experts' width is the only width that
# changes between variants.
FULL = Scale(d_model=128, n_layers=4, n_heads=4, d_ff=256, n_experts=8, seq_len=64, batch_size=16,
             steps=250, eval_every=25, eval_batches=4, lr=2e-3, warmup_steps=25)
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


def run_study(scale: Scale, seed: int, families: list[str]) -> dict:
    corpus = load_corpus()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "scale": asdict(scale), "seed": seed, "families": {}}
    started = time.perf_counter()
    for family_name in families:
        runs = {v: run_variant(family_name, v, scale, corpus, seed) for v in VARIANTS}
        dense_final = runs["dense"]["val"][-1][1]
        for run in runs.values():
            run["reaches_dense_final_at"] = reach_step(run["val"], dense_final)
        results["families"][family_name] = {"objective": FAMILIES[family_name], "runs": runs}
    results["total_seconds"] = time.perf_counter() - started
    return results


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
        runs = results["families"][family_name]["runs"]
        ax = axes[0][col]
        for name, run in runs.items():
            steps, losses = zip(*run["val"][1:])
            ax.plot(steps, losses, marker="o", markersize=3, label=name, color=COLORS[name],
                    linestyle="--" if name == "dense" else "-")
        ax.axhline(runs["dense"]["val"][-1][1], color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{family_name}: {results['families'][family_name]['objective']}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out loss (nats / byte)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        moe = [n for n in runs if runs[n]["routing"]]
        width = 0.8 / len(moe)
        for i, name in enumerate(moe):
            counts = np.sum([layer["experts_per_token"] for layer in runs[name]["routing"]], axis=0)
            ax.bar(np.arange(len(counts)) + (i - (len(moe) - 1) / 2) * width, counts / counts.sum(), width,
                   label=name, color=COLORS[name])
        ax.set_xlabel("experts processing a token (all MoE layers, held-out batches)")
        ax.set_ylabel("share of tokens")
        ax.legend(fontsize=8)
    fig.suptitle(f"forgeline MoE study, {results['date']}, {results['machine']['processor']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict, command: str, json_path: str) -> str:
    s, m = results["scale"], results["machine"]
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
        f"lr {s['lr']:g}, {s['warmup_steps']} warmup steps then cosine, seed {results['seed']} (same data order "
        f"for all), held-out loss on {s['eval_batches']} fixed batches every {s['eval_every']} steps. Token "
        "choice: capacity factor 1.25, load-balancing loss x 0.01. Expert choice: no auxiliary loss.",
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
             "| router | params (active) | final held-out loss (± s.e. over eval batches) | reaches dense final at step | s/step | "
             "max/mean expert load | experts/token | tokens with no expert | token choices dropped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in fam["runs"].items():
        r = run["routing"]
        mean = lambda key: (f"{np.mean([layer[key] for layer in r]):.2f}" if r else "-")  # noqa: E731
        pct = lambda key: (f"{100 * np.mean([layer[key] for layer in r]):.1f}%" if r and key in r[0] else "-")  # noqa: E731
        reach = run["reaches_dense_final_at"]
        lines.append(f"| {name} | {run['parameters'] / 1e6:.2f}M ({run['active_parameters'] / 1e6:.2f}M) | "
                     f"{run['val'][-1][1]:.4f}{_se(run)} | {reach if reach is not None else 'not reached'} | "
                     f"{run['seconds_per_step']:.3f} | {mean('expert_share_max_over_mean')} | "
                     f"{mean('mean_experts_per_token')} | {pct('tokens_with_no_expert')} | {pct('dropped_choices')} |")
    lines += ["", "Experts per token (share of held-out tokens processed by 0, 1, 2, ... experts, all MoE layers):",
              "", "| router | " + " | ".join(str(i) for i in range(len(_hist(fam, 'ec-cf1')))) + " |",
              "|---|" + "---|" * len(_hist(fam, "ec-cf1"))]
    for name in (n for n in fam["runs"] if fam["runs"][n]["routing"]):
        lines.append(f"| {name} | " + " | ".join(f"{100 * x:.1f}%" for x in _hist(fam, name)) + " |")
    return lines + [""]


def _se(run: dict) -> str:
    se = run.get("final_loss_std_error")
    return f" ± {se:.4f}" if se is not None else ""


def _hist(fam: dict, name: str) -> np.ndarray:
    counts = np.sum([layer["experts_per_token"] for layer in fam["runs"][name]["routing"]], axis=0)
    return counts / counts.sum()


def summary(results: dict) -> list[str]:
    """Plain sentences from the numbers: the paper's claim, checked per family."""
    out = []
    for family_name, fam in results["families"].items():
        runs = fam["runs"]
        ec, tc = runs["ec-cf2"], runs["tc-top2"]
        ec_at, tc_at = ec["reaches_dense_final_at"], tc["reaches_dense_final_at"]
        if ec_at is not None and tc_at is not None:
            reach = f"EC-CF2 reached the dense model's final loss at step {ec_at}, GShard top-2 at step {tc_at}"
            held = ec_at <= tc_at / 2
            verdict = ("in less than half the steps: the paper's claim held" if held
                       else "faster, but not in half the steps" if ec_at < tc_at
                       else "at the same evaluation: no difference at this resolution" if ec_at == tc_at
                       else "later: the paper's direction did not hold")
        else:
            reach = (f"EC-CF2 {'reached' if ec_at is not None else 'did not reach'} the dense model's final loss"
                     f"{f' (step {ec_at})' if ec_at is not None else ''}; GShard top-2 "
                     f"{'reached it' if tc_at is not None else 'did not'}{f' (step {tc_at})' if tc_at is not None else ''}")
            verdict = ("the paper's direction held" if ec_at is not None and tc_at is None
                       else "the paper's direction did not hold" if tc_at is not None and ec_at is None
                       else "so the step comparison is undecided")
        better = ec["val"][-1][1] < tc["val"][-1][1]
        out.append(f"- **{family_name}**: {reach}; {verdict}. Final held-out loss EC-CF2 {ec['val'][-1][1]:.4f} vs "
                   f"top-2 {tc['val'][-1][1]:.4f} ({'EC lower' if better else 'EC not lower'}); EC-CF1 "
                   f"{runs['ec-cf1']['val'][-1][1]:.4f} vs Switch top-1 {runs['tc-top1']['val'][-1][1]:.4f}; "
                   f"dense {runs['dense']['val'][-1][1]:.4f}.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and 60 steps (~2 min): checks the pipeline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of bert-moe,gpt-moe")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/moe_study.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/moe_study.png")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/moe_study.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_study(QUICK if args.quick else FULL, args.seed, args.families.split(","))
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
