"""One runner factory per bench backend: each loads once and returns a no-argument callable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest

from .peers import PEER_RUNNERS


def _run_ort(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime import load

    model = load(root, backend="ort")
    return lambda: model.run(**inputs)


def _run_tvm(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.model import select_build

    build = select_build(manifest, "cpu")
    return _executor_runner(root, build, build.lib, manifest, inputs)


def _run_tvm_tuned(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.model import select_build

    build = select_build(manifest, "cpu")
    key = f"{options.batch}x{options.seq}"
    bucket = (getattr(build, "buckets", None) or {}).get(key)
    if not bucket:
        raise ConfigError(f"no tuned build for {key} in {build.tag}; tune that bucket first.")
    return _executor_runner(root, build, bucket["lib"], manifest, inputs)


def _executor_runner(root: Path, build, lib: str, manifest: Manifest, inputs) -> Callable[[], Any]:
    # The executor directly, not load(): load() may dispatch to a tuned bucket for this shape,
    # and "tvm" must time the untuned dynamic build it names.
    from forgeline.runtime.backends.tvm import library_executor

    executor = library_executor(root, build, lib, device="cpu")
    ordered = [inputs[name] for name in manifest.input_names()]
    return lambda: executor.run(ordered)


def _run_eager(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.errors import ConfigError, MissingDependencyError
    from forgeline.runtime.format import WEIGHTS_FILE
    from forgeline.runtime.host import cpu_core_count

    try:
        import torch

        from forgeline.define import load_checkpoint
        from forgeline.export.eager import run_eager
    except ImportError as exc:
        raise MissingDependencyError(f"the eager backend needs torch ({exc.name} is missing); "
                                     "install torch or leave eager out of --backends.") from exc
    if manifest is not None and manifest.source != "registry":
        raise ConfigError(f"an artifact built from {'an ONNX file' if manifest.source == 'onnx' else 'a module'} "
                          "has no checkpoint to run eager PyTorch from.")
    torch.set_num_threads(cpu_core_count())
    model = load_checkpoint(root / WEIGHTS_FILE).eval()
    return lambda: run_eager(model, inputs)


RUNNERS = {"eager": _run_eager, "ort": _run_ort, "tvm": _run_tvm, "tvm-tuned": _run_tvm_tuned,
           **PEER_RUNNERS}  # tvm-bf16, openvino, openvino-f32 (peers.py)
