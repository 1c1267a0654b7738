"""Top-1 agreement of each bench backend with eager fp32 PyTorch, beside its latency.

Each backend's runner is called once on the bench inputs; the first output (the logits) is
compared, position by position, by its argmax over the last axis with eager PyTorch's on the
same inputs. Runners return outputs in different containers (a dict by name from the runtime
and eager, a list from the TVM executor, OpenVINO's result object), so the first output is
taken by the manifest's first output name or by position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from forgeline.runtime.errors import ForgelineError
from forgeline.runtime.format import Manifest

log = logging.getLogger(__name__)


def first_output(result: Any, manifest: Manifest) -> np.ndarray | None:
    """The first output (the logits) of one runner call, whatever container it came in."""
    if isinstance(result, dict):
        value = result.get(manifest.output_names()[0])
    elif hasattr(result, "to_tuple"):  # OpenVINO's OVDict, in the compiled model's output order
        value = result.to_tuple()[0]
    elif isinstance(result, (list, tuple)):
        value = result[0] if result else None
    else:
        value = None
    return None if value is None else np.asarray(value)


def top1_agreements(runners: dict[str, Callable[[], Any]], manifest: Manifest,
                    reference: Callable[[], Any] | None) -> dict[str, float]:
    """backend -> share of positions whose argmax equals ``reference``'s (eager fp32)."""
    if reference is None:
        return {}
    want = first_output(reference(), manifest)
    found = {}
    for name, run in runners.items():
        got = first_output(run(), manifest)
        if got is not None and want is not None and got.shape == want.shape:
            found[name] = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    return found


def eager_reference(runners: dict[str, Callable[[], Any]], make_eager: Callable[[], Callable[[], Any]]):
    """The eager runner: the one being timed, or a fresh one; None where torch is missing."""
    if "eager" in runners:
        return runners["eager"]
    try:
        return make_eager()
    except ForgelineError as exc:
        log.info("no top-1 agreement: %s", exc)
        return None


__all__ = ["eager_reference", "first_output", "top1_agreements"]
