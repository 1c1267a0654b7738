"""Generation artifacts, built once per session: tiny models with a wide init (init_std 0.3).

The default init (std 0.02) gives a tiny model near-uniform logits whose greedy continuation is
one token repeated; a wide init makes greedy decoding walk through many tokens with clear argmax
margins, so token-identical comparisons test something.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GEN_INIT_STD = 0.3


@pytest.fixture(scope="session")
def gen_artifact(shared_root, build_once):
    """name -> path of a tiny exported + compiled artifact (with generation graphs), built once
    per test run (tests/conftest.py's ``built_once``)."""
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

    return lambda name: build_once(root, name, build)
