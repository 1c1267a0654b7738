"""Training on a text corpus: AdamW, linear warmup + cosine decay, gradient clipping, held-out
evaluation, safetensors checkpoints, and exact resume.

Objective per family: GPT -> causal LM; BERT -> MLM (+ NSP unless ``nsp=False``); Transformer ->
teacher-forced seq2seq (source = a window of text, target = the text after it). Token-choice MoE
adds ``aux_loss_weight`` x the load-balancing loss; expert choice needs none.

A checkpoint is two files: ``CKPT`` (define/checkpoint.py: weights + config in the metadata; it
goes straight into ``forgeline build --weights CKPT``) and ``CKPT.train.pt`` (optimizer state,
step, options, loss history). Batches depend on (seed, step) only, so resuming from a checkpoint
reproduces the run that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from forgeline.runtime.errors import ArtifactError, ConfigError
from forgeline.runtime import progress
from forgeline.runtime.tokenizer import ByteTokenizer

from forgeline.define.checkpoint import load_checkpoint, save_checkpoint
from forgeline.define.config import ForgelineModel, ModelConfig
from forgeline.define.registry import build_model, get_config

from . import data
from .objectives import causal_lm_loss, mlm_loss, nsp_loss, seq2seq_loss

log = logging.getLogger(__name__)

STATE_SUFFIX = ".train.pt"
# Options that may change when resuming; any other change would make the resumed run a different run.
_RESUMABLE_CHANGES = {"steps", "eval_every", "log_every", "save_every"}


@dataclass(kw_only=True)
class TrainOptions:
    steps: int = 200  # total optimizer steps (a resumed run continues up to this count)
    batch_size: int = 16  # sequences per step; also the causal MoE group size in GPT/decoder layers
    seq_len: int = 64  # tokens per sequence (per side for seq2seq); at most the model's max_positions
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 20  # linear warmup from 0 to lr
    weight_decay: float = 0.01  # AdamW decay on matrices, not on biases / LayerNorm
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (GPT-3 / nanoGPT)
    grad_clip: float = 1.0  # global gradient-norm clip; 0 = off
    aux_loss_weight: float = 0.01  # token-choice load-balancing loss weight (Switch: 0.01)
    nsp: bool = True  # BERT: add next-sentence prediction to the MLM loss
    eval_every: int = 50  # steps between held-out evaluations (and one at the end)
    eval_batches: int = 4  # held-out batches per evaluation (fixed across the run)
    log_every: int = 10  # steps between progress lines
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    val_fraction: float = 0.05  # the corpus' last share held out
    seed: int = 0  # weight init, data order and masking

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError(f"lr={self.lr} must be positive, min_lr_ratio={self.min_lr_ratio} in [0, 1], "
                              f"warmup_steps={self.warmup_steps} non-negative.")
        self.betas = tuple(self.betas)


def lr_at(step: int, options: TrainOptions) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    span = max(1, options.steps - options.warmup_steps)
    fraction = min(1.0, (step - options.warmup_steps) / span)
    floor = options.lr * options.min_lr_ratio
    return floor + 0.5 * (options.lr - floor) * (1.0 + math.cos(math.pi * fraction))


# --------------------------------------------------------------------------------------- objectives


@dataclass
class StepOutput:
    loss: torch.Tensor  # the objective (without the auxiliary loss)
    routing: list[torch.Tensor]  # routing.{i} masks (B, T, E)
    token_mask: torch.Tensor | None  # (B, T) 1 = real token, None = all real


def make_batch(model: ForgelineModel, ids: torch.Tensor, generator: torch.Generator, options: TrainOptions) -> dict:
    family = model.config.family
    kw = dict(batch_size=options.batch_size, seq_len=options.seq_len, generator=generator)
    if family == "gpt":
        return data.clm_batch(ids, **kw)
    if family == "bert":
        return data.mlm_batch(ids, nsp=options.nsp, **kw)
    return data.seq2seq_batch(ids, **kw)


def forward_loss(model: ForgelineModel, batch: dict, options: TrainOptions) -> StepOutput:
    family = model.config.family
    if family == "gpt":
        out = model(batch["input_ids"])
        return StepOutput(causal_lm_loss(out[0], batch["input_ids"]), list(out[1:]), None)
    if family == "bert":
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        loss = mlm_loss(out[1], batch["labels"])
        if options.nsp:
            loss = loss + nsp_loss(out[2], batch["is_random"])
        return StepOutput(loss, list(out[3:]), batch["attention_mask"])
    out = model(batch["src_ids"], batch["tgt_ids"])
    return StepOutput(seq2seq_loss(out[0], batch["target"]), list(out[1:]), None)


# ------------------------------------------------------------------------------------------ trainer


@dataclass
class EvalResult:
    step: int
    loss: float  # mean held-out objective over the fixed evaluation batches
    batch_losses: list[float] = field(default_factory=list)  # one per evaluation batch (for a spread)
    routing: list[torch.Tensor] = field(default_factory=list)  # per MoE layer (N, T, E), batches concatenated
    token_mask: torch.Tensor | None = None  # (N, T) 1 = real token; None = all real


class Trainer:
    """One model, one corpus, one optimizer; ``train_step`` and ``evaluate`` are the moving parts."""

    def __init__(self, model: ForgelineModel, corpus: data.Corpus, options: TrainOptions):
        limit = model.config.max_positions
        if options.seq_len > limit:
            raise ConfigError(f"seq_len={options.seq_len} exceeds the model's max_positions={limit}; "
                              f"pass --seq-len {limit} or less.")
        self.model, self.corpus, self.options = model, corpus, options
        self.optimizer = adamw_optimizer(model, options)
        self.step = 0  # optimizer steps taken
        self.history: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
        # The held-out batches are drawn once (windows and masking fixed) so evaluations compare.
        self._eval_set = [make_batch(model, corpus.val, data.step_generator(options.seed, 10**9 + i), options)
                          for i in range(options.eval_batches)]
        self._uses_aux = model.config.router == "token_choice"

    def train_step(self) -> float:
        o = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, o)
        self.model.train()
        batch = make_batch(self.model, self.corpus.train, data.step_generator(o.seed, self.step), o)
        out = forward_loss(self.model, batch, o)
        total = out.loss + o.aux_loss_weight * self.model.aux_loss() if self._uses_aux else out.loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        self.step += 1
        loss = float(out.loss.detach())
        self.history["train"].append((self.step, loss))
        return loss

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        self.model.eval()
        losses, routings, masks = [], [], []
        for batch in self._eval_set:
            out = forward_loss(self.model, batch, self.options)
            losses.append(float(out.loss))
            routings.append(out.routing)
            masks.append(out.token_mask)
        loss = sum(losses) / len(losses)
        self.history["val"].append((self.step, loss))
        routing = [torch.cat(layer) for layer in zip(*routings)]
        token_mask = None if masks[0] is None else torch.cat(masks)
        return EvalResult(self.step, loss, losses, routing, token_mask)

    def tokens_per_step(self) -> int:
        sides = 2 if self.model.config.family == "transformer" else 1
        return self.options.batch_size * self.options.seq_len * sides

    def save(self, path: str | Path) -> None:
        """CKPT (weights + config) and CKPT.train.pt (what resuming needs)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.model, path)
        torch.save({"format": 1, "step": self.step, "optimizer": self.optimizer.state_dict(),
                    "options": dataclasses.asdict(self.options), "history": self.history,
                    "torch_rng": torch.get_rng_state()}, state_path(path))

    @classmethod
    def resume(cls, path: str | Path, corpus: data.Corpus, options: TrainOptions) -> "Trainer":
        path = Path(path)
        if not state_path(path).is_file():
            raise ArtifactError(f"{state_path(path)} does not exist; resuming needs the training state saved "
                                f"next to {path} by `forgeline train`.")
        model = load_checkpoint(path)
        state = torch.load(state_path(path), weights_only=True)
        _check_resume_options(state["options"], dataclasses.asdict(options), path)
        if state["step"] >= options.steps:
            raise ConfigError(f"{path} has already been trained for {state['step']} steps; pass --steps above that.")
        trainer = cls(model, corpus, options)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step, trainer.history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d of %d", path, trainer.step, options.steps)
        return trainer


def resume_options(checkpoint: str | Path, **changes) -> TrainOptions:
    """The options a checkpoint was trained with, with ``changes`` applied (e.g. steps=400)."""
    path = state_path(checkpoint)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; resuming needs the training state saved next to {checkpoint} "
                            "by `forgeline train`.")
    saved = torch.load(path, weights_only=True)["options"]
    return TrainOptions(**{**saved, **changes})


def state_path(checkpoint: str | Path) -> Path:
    """Where the training state of a checkpoint lives: CKPT.train.pt."""
    return Path(str(checkpoint) + STATE_SUFFIX)


def adamw_optimizer(model: ForgelineModel, options: TrainOptions) -> torch.optim.AdamW:
    # Decay matrices (and stacked expert matrices); not biases, LayerNorm or b1/b2 of the experts.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        (decay if p.dim() >= 2 and leaf not in ("b1", "b2") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=options.lr, betas=options.betas)


def _check_resume_options(saved: dict, now: dict, path: Path) -> None:
    saved = {**saved, "betas": tuple(saved["betas"])}
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        diffs = ", ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in changed)
        raise ConfigError(f"resuming {path} with different options ({diffs}); pass the options of the first run.")


# -------------------------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    checkpoint: Path
    step: int  # steps taken in total
    history: dict[str, list[tuple[int, float]]]  # "train": (step, loss) per step; "val": (step, loss)
    seconds: float  # wall time of this call's steps (evaluation excluded)
    tokens_per_second: float


def fit(trainer: Trainer, output: str | Path) -> TrainResult:
    """Train up to options.steps, evaluating and logging progress; save the checkpoint at the end."""
    o = trainer.options
    if trainer.step == 0:
        log.info("step 0: val loss %.4f", trainer.evaluate().loss)
    first = trainer.step
    with progress.stage(f"train {trainer.model.config.name}", total=o.steps, unit="steps") as bar:
        bar.advance(trainer.step)  # a resumed run starts where it stopped
        seconds = _steps(trainer, output, bar)
    trainer.save(output)
    done = trainer.step - first
    return TrainResult(Path(output), trainer.step, trainer.history, seconds,
                       done * trainer.tokens_per_step() / seconds if seconds else 0.0)


def _steps(trainer: Trainer, output: str | Path, bar: progress.Task) -> float:
    """Step up to options.steps, logging, evaluating and saving on schedule; the seconds spent stepping."""
    o = trainer.options
    first, seconds = trainer.step, 0.0
    while trainer.step < o.steps:
        t0 = time.perf_counter()
        loss = trainer.train_step()
        seconds += time.perf_counter() - t0
        done = trainer.step - first
        bar.advance(trainer.step, info=f"loss {loss:.4f}")
        if trainer.step % o.log_every == 0 or trainer.step == o.steps:
            eta = seconds / done * (o.steps - trainer.step)
            log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  ETA %s", trainer.step, o.steps, loss,
                     lr_at(trainer.step - 1, o), done * trainer.tokens_per_step() / seconds, _clock(eta))
        if trainer.step % o.eval_every == 0 or trainer.step == o.steps:
            log.info("step %d: val loss %.4f", trainer.step, trainer.evaluate().loss)
        if o.save_every and trainer.step % o.save_every == 0 and trainer.step < o.steps:
            trainer.save(output)
    return seconds


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def training_config(name: str, preset: str = "tiny", **overrides) -> ModelConfig:
    """The registry config, with vocab_size set to the byte tokenizer's (264) unless overridden.

    The corpus is read as bytes, so a larger preset vocabulary would only add embedding rows that
    never see a token; the override is part of the config and so recorded in the checkpoint."""
    overrides.setdefault("vocab_size", ByteTokenizer.vocab_size)
    return get_config(name, preset, **overrides)


def train(name: str, output: str | Path, options: TrainOptions, *, preset: str = "tiny",
          corpus: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          overrides: dict | None = None) -> TrainResult:
    """Train model ``name`` on a text corpus (default: the shipped one) and write CKPT + CKPT.train.pt."""
    output = Path(output)
    if not resume and output.exists() and not overwrite:
        raise ConfigError(f"{output} already exists; pass --resume to continue it or --overwrite to start again.")
    text = data.load_corpus(corpus, val_fraction=options.val_fraction)
    if resume:
        trainer = Trainer.resume(output, text, options)
        if trainer.model.config.name != name:
            raise ConfigError(f"{output} holds a {trainer.model.config.name} model, not {name}; "
                              f"resume it as `forgeline train {trainer.model.config.name} --resume`.")
    else:
        config = training_config(name, preset, **(overrides or {}))
        trainer = Trainer(build_model(config, seed=options.seed), text, options)
    c = trainer.model.config
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.info("training %s (%s, router=%s, %.2fM parameters, vocab %d) on %s: %s", c.name, preset, c.router,
             n_params / 1e6, c.vocab_size, text.path, _describe(options))
    return fit(trainer, output)


def _describe(options: TrainOptions) -> str:
    return ", ".join(f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options))
