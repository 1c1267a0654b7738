"""Golden vectors: reference inputs and the eager-PyTorch outputs for them, in one .npz file.

Keys are ``case{i}/in/<input>`` and ``case{i}/out/<output>``, so the file is plain numpy and any
tool can read it.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ArtifactError

_CASE_NAME = re.compile(r"case(0|[1-9][0-9]{0,5})")


@dataclass
class GoldenCase:
    name: str  # "case0", "case1", ...
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def save_golden(path: Path, cases: list[GoldenCase]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for case in cases:
        arrays.update({f"{case.name}/in/{k}": v for k, v in case.inputs.items()})
        arrays.update({f"{case.name}/out/{k}": v for k, v in case.outputs.items()})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_golden(path: Path) -> list[GoldenCase]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{path} cannot be read as golden vectors ({exc}); rebuild the artifact.") from exc
    cases: dict[str, GoldenCase] = {}
    for key, value in arrays.items():
        parts = key.split("/", 2)
        if len(parts) != 3 or parts[1] not in ("in", "out"):
            raise ArtifactError(f"{path} has an unexpected entry {key!r}; rebuild the artifact.")
        if not _CASE_NAME.fullmatch(parts[0]):
            raise ArtifactError(f"{path} has a case named {parts[0]!r}; golden cases are named case0, case1, ...; "
                                "rebuild the artifact.")
        case = cases.setdefault(parts[0], GoldenCase(parts[0], {}, {}))
        (case.inputs if parts[1] == "in" else case.outputs)[parts[2]] = value
    for case in cases.values():
        if not case.inputs or not case.outputs:
            raise ArtifactError(f"{path} holds no {'inputs' if not case.inputs else 'outputs'} for {case.name}, so "
                                "there is nothing to compare; rebuild the artifact.")
    return [cases[k] for k in sorted(cases, key=lambda name: int(name.removeprefix("case")))]
