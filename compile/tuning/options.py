"""Tuning options: what to tune (shape buckets, trials) and where to keep and measure it.

MetaSchedule tunes static shapes only, so each bucket (e.g. batch 1, seq 128) is imported from the
ONNX graph with those shapes, tuned into the persistent database of its target, compiled with the
best schedules and exported as ``tvm/<tag>/bucket-1x128.so``. The dynamic ``model.so`` stays the
fallback: the runtime serves a bucket build only when a call's shapes equal its dims exactly.

Buckets are written ``BxT`` (``1x128,8x128``), sizes of the model's symbolic dims in the order the
inputs first name them: (batch, seq) for GPT and BERT, (batch, src_seq, tgt_seq) for the
encoder-decoder, which also takes ``BxT`` for src_seq = tgt_seq = T.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest
from forgeline.runtime.inputs import symbolic_dims

from .database import default_database_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """What to tune and where to keep the results; resolved values are logged once."""

    buckets: str | Sequence[Mapping[str, int]]  # "1x128,8x128", or [{"batch": 1, "seq": 128}]
    trials: int = 64  # measured candidates per bucket, over all of its tasks
    max_trials_per_task: int | None = None  # cap per fused function; None: no cap but trials
    database: Path | None = None  # default: $FORGELINE_CACHE_DIR|~/.cache/forgeline/tuning/<tag>
    rpc_tracker: str | None = None  # "host:port" of a TVM RPC tracker; None measures here
    rpc_key: str | None = None  # the device key registered with that tracker
    timeout_s: float = 30.0  # limit per candidate build and per measurement session
    seed: int = 0  # MetaSchedule's search seed
    tune_matmuls: bool = False  # False: matmuls keep the default schedule (matmul.py)


@dataclass(frozen=True)
class ResolvedTuning:
    buckets: list[dict[str, int]]
    trials: int
    max_trials_per_task: int
    database: Path
    rpc: tuple[str, int, str] | None
    timeout_s: float
    seed: int
    tune_matmuls: bool

    def describe(self) -> str:
        where = f"RPC tracker {self.rpc[0]}:{self.rpc[1]} key {self.rpc[2]}" if self.rpc else "this host"
        return (f"buckets {', '.join(bucket_key(b) for b in self.buckets)}; {self.trials} trials per "
                f"bucket, at most {self.max_trials_per_task} per task; database {self.database}; "
                f"measured on {where}; timeout {self.timeout_s:g} s; seed {self.seed}; matmuls "
                f"{'tuned' if self.tune_matmuls else 'at the default schedule'}")


def bucket_key(dims: Mapping[str, int]) -> str:
    """"1x128": the sizes joined in dim order (the manifest key and file name part)."""
    return "x".join(str(size) for size in dims.values())


def parse_buckets(text: str, manifest: Manifest) -> list[dict[str, int]]:
    """Turn "1x128,8x128" into [{dim: size}] for this model; a sentence on anything invalid."""
    names = symbolic_dims(manifest.inputs)
    example = "x".join(["1"] + ["128"] * (len(names) - 1))
    specs = [part.strip() for part in str(text).split(",") if part.strip()]
    if not specs:
        raise ConfigError(f"No bucket given; pass --buckets like {example} ({'x'.join(names)}).")
    buckets = []
    for spec in specs:
        sizes = [p.strip() for p in re.split(r"[xX]", spec)]
        if not all(p.isdigit() for p in sizes):
            raise ConfigError(f"Bucket {spec!r} is not sizes joined by 'x'; write it like {example} "
                              f"({'x'.join(names)}).")
        buckets.append(_bucket_from_sizes(spec, [int(p) for p in sizes], names, example))
    return buckets


def _bucket_from_sizes(spec: str, sizes: list[int], names: list[str], example: str) -> dict[str, int]:
    if len(sizes) == 2 and len(names) > 2:
        sizes = sizes + [sizes[1]] * (len(names) - 2)  # "B x T": every sequence is T long
    if len(sizes) != len(names):
        raise ConfigError(f"Bucket {spec!r} gives {len(sizes)} size(s) but this model has "
                          f"{len(names)} symbolic dims ({'x'.join(names)}); write it like {example}.")
    return dict(zip(names, sizes))


def validate_buckets(buckets: Sequence[Mapping[str, int]], manifest: Manifest) -> list[dict[str, int]]:
    """Check dims against the model: every symbolic dim given, within 1..its limit, no repeats."""
    names = symbolic_dims(manifest.inputs)
    checked: list[dict[str, int]] = []
    for bucket in buckets:
        if sorted(bucket) != sorted(names):
            raise ConfigError(f"Bucket {dict(bucket)} must give exactly the dims {', '.join(names)}.")
        ordered = {name: bucket[name] for name in names}
        for name, size in ordered.items():
            limit = manifest.dim_limits.get(name)
            if not isinstance(size, int) or size < 1 or (limit is not None and size > limit):
                bound = f"1..{limit}" if limit is not None else "at least 1"
                raise ConfigError(f"Bucket {bucket_key(ordered)} has {name}={size}, but "
                                  f"{manifest.name} supports {name} {bound}; choose a size in range.")
        if ordered in checked:
            raise ConfigError(f"Bucket {bucket_key(ordered)} is given twice; list each bucket once.")
        checked.append(ordered)
    return checked


def resolve_tuning(options: TuneOptions, manifest: Manifest, target_tag: str) -> ResolvedTuning:
    """Check the options against the model and fill in defaults; logs the result once."""
    raw = options.buckets
    buckets = validate_buckets(parse_buckets(raw, manifest) if isinstance(raw, str) else raw, manifest)
    if options.trials < 1:
        raise ConfigError(f"trials={options.trials} must be at least 1.")
    per_task = options.max_trials_per_task or options.trials
    if per_task < 1:
        raise ConfigError(f"max_trials_per_task={per_task} must be at least 1.")
    if options.timeout_s <= 0:
        raise ConfigError(f"timeout_s={options.timeout_s} must be positive.")
    database = Path(options.database).expanduser() if options.database else default_database_dir(target_tag)
    resolved = ResolvedTuning(
        buckets=buckets, trials=options.trials, max_trials_per_task=min(per_task, options.trials),
        database=database,
        rpc=_parse_rpc(options.rpc_tracker, options.rpc_key), timeout_s=options.timeout_s,
        seed=options.seed, tune_matmuls=options.tune_matmuls)
    logger.info("tuning %s for %s: %s", manifest.name, target_tag, resolved.describe())
    return resolved


def _parse_rpc(tracker: str | None, key: str | None) -> tuple[str, int, str] | None:
    if tracker is None and key is None:
        return None
    match = re.fullmatch(r"\s*([^:\s]+):(\d+)\s*", tracker or "")
    if match is None:
        raise ConfigError(f"RPC tracker {tracker!r} is not HOST:PORT; pass e.g. "
                          "--rpc-tracker 127.0.0.1:9190 --rpc-key my-device.")
    if not key:
        raise ConfigError(f"--rpc-tracker {tracker} needs --rpc-key: the key the device servers "
                          "registered with the tracker.")
    return match.group(1), int(match.group(2)), key


__all__ = ["ResolvedTuning", "TuneOptions", "bucket_key", "parse_buckets", "resolve_tuning",
           "validate_buckets"]
