"""Reduced-precision builds for the benchmark scripts: which precisions exist, and building them.

The precisions come from ``compile.precision.PRECISIONS``, so a precision added there (int8) is
built and measured by every script without a change here. A precision this host's CPU cannot
build is skipped with its one-sentence reason in the log, not an error: the scripts then report
the others.
"""

from __future__ import annotations

import logging
from itertools import product
from pathlib import Path

from forgeline.runtime.errors import ConfigError

log = logging.getLogger(__name__)
GPU_ONLY = ("fp16",)


def reduced_cpu_precisions() -> list[str]:
    """Every CPU precision forgeline builds besides fp32 (bf16, and int8 where it exists)."""
    from forgeline.compile.precision import PRECISIONS

    return [p for p in PRECISIONS if p != "fp32" and p not in GPU_ONLY]


def parse_precisions(text: str) -> list[str]:
    """"auto" -> every reduced CPU precision; else a comma-separated list, checked."""
    known = reduced_cpu_precisions()
    if text == "auto":
        return known
    wanted = [p for p in text.split(",") if p and p != "fp32"]
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise ConfigError(f"unknown precision(s) {', '.join(unknown)}; this forgeline builds "
                          f"{', '.join(['fp32', *known])} on CPU.")
    return wanted


def compile_precisions(root: Path, precisions: list[str], bf16_kernels: tuple[str, ...] = ("auto",),
                       mcpu: str | None = None, int8_kernels: tuple[str, ...] = ("auto",),
                       attention: tuple[str, ...] = ("fp32",)) -> list[str]:
    """Add a build per precision (bf16 and int8: per kernel; per ``attention`` precision: "fp32"
    and/or "reduced", CompileOptions.attention_precision) to the artifact at ``root``, unless it
    has it; the tags of the artifact's builds of those precisions."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.compile.artifact import resolve_precision_target
    from forgeline.runtime.format import Manifest

    built = []
    for precision in precisions:
        kernels = {"bf16": bf16_kernels, "int8": int8_kernels}
        for kernel, attention_precision in product(kernels.get(precision, ("auto",)), attention):
            forced = {f"{precision}_kernel": kernel} if precision in kernels else {}
            options = CompileOptions(precision=precision, mcpu=mcpu, attention_precision=attention_precision,
                                     **forced)
            try:
                if resolve_precision_target(options).tag in Manifest.load(root).builds:
                    manifest = Manifest.load(root)
                    log.info("reusing the %s build of %s", precision, root)
                else:
                    manifest = compile_artifact(root, options)
            except ConfigError as exc:
                log.warning("no %s build%s: %s", precision, f" ({kernel} kernel)" if kernel != "auto" else "", exc)
                continue
            built += [t for t, b in manifest.builds.items() if b.precision == precision and t not in built]
    return built


__all__ = ["compile_precisions", "parse_precisions", "reduced_cpu_precisions"]
