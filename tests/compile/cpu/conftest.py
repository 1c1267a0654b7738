"""Fixtures shared by the CPU build tests."""

from __future__ import annotations

import pytest

from forgeline.runtime.format import Manifest


@pytest.fixture
def assert_tied_table_stored_once():
    return _assert_tied_table_stored_once


def _assert_tied_table_stored_once(root, build) -> None:
    """GPT ties its embedding to the LM head: the build's weights hold no fp32 (vocab, d_model)
    table beside the head's packed copy (the lookup reads the packed rows)."""
    from forgeline.runtime.params_file import parse_header

    config = Manifest.load(root).config
    entries, _ = parse_header(root / build.params_file)
    shapes = {(e.dtype, tuple(e.shape)) for e in entries.values()}
    assert ("float32", (config["vocab_size"], config["d_model"])) not in shapes
    assert ("float32", (config["d_model"], config["vocab_size"])) not in shapes
