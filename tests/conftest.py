"""Shared fixtures: tiny artifacts are built once per test session and reused read-only."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_artifact(artifact_root):
    """Return a function name -> path of a tiny artifact (exported + compiled for cpu), built once."""
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            out = artifact_root / name
            # The KV-cache graphs have their own fixtures (tests/generate); leaving them out here keeps
            # these shared artifacts to one graph each and the suite within its time budget.
            export_model(name, out, ExportOptions(generation_graphs=False))
            compile_artifact(out)
            built[name] = out
        return built[name]

    return get


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
