"""Files the commands read and write: checked before any long work starts, refused with a sentence."""

from __future__ import annotations

import zipfile
from pathlib import Path

from forgeline.runtime.errors import InputError


def check_output_file(path: Path, flag: str, *, inside: Path | None = None, suffix: str | None = None) -> Path:
    """The path that will really be written (``suffix`` appended as numpy does); refuse one that cannot be.

    ``inside``: an artifact folder the file must not land in (it would change the artifact's own files).
    """
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        path = path.with_name(path.name + suffix)  # np.savez appends .npz to any other name
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: the folder {parent} does not exist; create it first or choose another path.")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name.")
    if inside is not None and path.resolve().is_relative_to(Path(inside).resolve()):
        raise InputError(f"{flag} {path} lies inside the artifact {inside}, whose files are checked by hash; write "
                         "the outputs somewhere else.")
    return path


def read_npz(path: Path, flag: str = "--inputs", *, manifest=None) -> dict:
    """The arrays of an .npz file; a sentence for a missing, truncated or non-.npz file.

    With ``manifest``, the sizes the members declare are checked against the model's limits first,
    before anything is decompressed (runtime/limits.py).
    """
    import numpy as np

    if not Path(path).is_file():
        raise InputError(f"{flag} file {path} does not exist; pass an .npz with one array per model input.")
    if manifest is not None and zipfile.is_zipfile(path):
        from forgeline.runtime.limits import check_npz_headers
        from forgeline.runtime.validate import graph_dim_limits

        check_npz_headers(Path(path), manifest.inputs, graph_dim_limits(manifest), flag)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy: np.load returns the array itself
            raise InputError(f"{flag} {path} holds a single array (.npy), not an .npz archive; save the inputs "
                             "with np.savez(path, input_ids=..., ...), one array per model input.")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{flag} {path} is not a readable .npz file ({exc}); it may be truncated.") from exc


def write_npz(path: Path, arrays: dict, flag: str = "-o") -> None:
    """Write ``arrays`` to ``path`` through a temporary file and a rename: a failed write keeps the old file."""
    import numpy as np

    from forgeline.runtime.atomic import atomic_write
    from forgeline.runtime.storage import storage_error

    try:
        atomic_write(Path(path), lambda fh: np.savez(fh, **arrays))
    except OSError as exc:
        raise storage_error(exc, f"writing {flag} {path}") from exc


__all__ = ["check_output_file", "read_npz", "write_npz"]
