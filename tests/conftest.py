"""Shared fixtures: tiny artifacts are built once per test run and reused read-only.

The suite runs on several pytest-xdist workers, each with its own session; a session-scoped
fixture alone would build the same artifact once per worker. ``built_once`` builds it once for
the whole run: the first worker to ask builds it under a file lock, the others wait and reuse it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def built_once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``root / name``, made by ``build(path)`` once per test run whichever worker asks first."""
    from filelock import FileLock

    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # what a failed earlier try left
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A folder every worker of this run sees: under xdist each worker's base temp folder
    (``.../pytest-N/popen-gwK``) sits in the run's own, which is removed with old runs."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def artifact_root(shared_root) -> Path:
    root = shared_root / "artifacts"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_artifact(artifact_root):
    """Return a function name -> path of a tiny artifact (exported + compiled for cpu), built once."""
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    def build(out: Path) -> None:
        # The KV-cache graphs have their own fixtures (tests/generate); leaving them out here keeps
        # these shared artifacts to one graph each and the suite within its time budget.
        export_model(out.name, out, ExportOptions(generation_graphs=False))
        compile_artifact(out)

    return lambda name: built_once(artifact_root, name, build)


@pytest.fixture(scope="session")
def generation_bundle(artifact_root):
    """name -> a tiny bundle exported with its generation graphs (default init, not compiled),
    once per test run; a test copies it before compiling into it."""
    from forgeline.export import ExportOptions, export_model

    def build(out: Path) -> None:
        export_model(out.name.removesuffix("-exported"), out, ExportOptions())

    return lambda name: built_once(artifact_root, f"{name}-exported", build)


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    """A private copy of a tiny artifact that a test may damage."""

    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}-copy"
        shutil.copytree(tiny_artifact(name), dst)
        return dst

    return copy


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)


# Generation artifacts: tiny models with a wide init. The default init (std 0.02) gives a tiny
# model near-uniform logits whose greedy continuation is one token repeated; a wide init makes
# greedy decoding walk through many tokens with clear argmax margins, so token-identical
# comparisons test something.
GEN_INIT_STD = 0.3


@pytest.fixture(scope="session")
def gen_artifact(shared_root):
    """name -> path of a tiny exported + compiled artifact (with generation graphs), built once
    per test run."""
    from forgeline.compile import compile_artifact
    from forgeline.define import build_model, get_config, save_checkpoint
    from forgeline.export import ExportOptions, export_model

    root = shared_root / "gen-artifacts"
    root.mkdir(exist_ok=True)

    def build(out: Path) -> None:
        weights = root / f"{out.name}.safetensors"
        save_checkpoint(build_model(get_config(out.name, "tiny", init_std=GEN_INIT_STD), seed=3), weights)
        export_model(out.name, out, ExportOptions(weights=weights, golden_cases=1))
        compile_artifact(out)

    return lambda name: built_once(root, name, build)
