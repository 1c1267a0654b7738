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
def gen_artifact(tmp_path_factory):
    """name -> path of a tiny exported + compiled artifact (with generation graphs), built once."""
    from forgeline.compile import compile_artifact
    from forgeline.define import build_model, get_config, save_checkpoint
    from forgeline.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("gen-artifacts")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            weights = root / f"{name}.safetensors"
            save_checkpoint(build_model(get_config(name, "tiny", init_std=GEN_INIT_STD), seed=3), weights)
            out = root / name
            export_model(name, out, ExportOptions(weights=weights, golden_cases=1))
            compile_artifact(out)
            built[name] = out
        return built[name]

    return get
