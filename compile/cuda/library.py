"""Swap the CUDA module's source for a fatbin inside an exported TVM library, and read it back.

Without a CUDA driver, TVM 0.27's codegen leaves the kernels as CUDA source in a module of kind
"cuda", and ``export_library`` packs that module into the library's ``__tvm_ffi__library_bin``
symbol. ``packer_with_fatbin`` packs the same modules with the CUDA payload rewritten to hold the
fatbin instead, so the GPU host needs only its driver; ``read_cuda_payload`` reads a finished
library's CUDA module back (its format, kernel names and code) straight from the ELF file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import CompileError

from .fatbin import elf_symbol_bytes

LIBRARY_BIN_SYMBOL = "__tvm_ffi__library_bin"

# ---- library-blob rewriting: swap the CUDA module's source for a fatbin ------------------------
# tvm_ffi's packed library binary: <nbytes u64> <indptr vec<u64>> <children vec<u64>> then per
# module <kind str> [<payload bytes>] ("_lib" has no payload); str/bytes/vec are <u64 len><data>.
# A CUDA module's payload is <fmt str> <fmap> <code bytes>.

def _read_u64(buf: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("<Q", buf, pos)[0], pos + 8


def _read_chunk(buf: bytes, pos: int, item_size: int = 1) -> tuple[bytes, int]:
    count, pos = _read_u64(buf, pos)
    end = pos + count * item_size
    return buf[pos:end], end


def _chunk(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _swap_cuda_payload(payload: bytes, source: bytes, fatbin: bytes) -> bytes:
    fmt, pos = _read_chunk(payload, 0)
    if fmt != b"cuda" or not payload.endswith(_chunk(source)):
        raise CompileError(
            f"The CUDA module's serialized layout is not the one forgeline knows (format "
            f"{fmt[:16]!r}); this TVM version changed it, so build without nvcc (FORGELINE_NVCC unset, no nvidia-cuda-nvcc, none on PATH) to ship "
            "source, or update forgeline."
        )
    fmap = payload[pos:len(payload) - len(_chunk(source))]
    return _chunk(b"fatbin") + fmap + _chunk(fatbin)


def rewrite_library_bin(blob: bytes, source: bytes, fatbin: bytes) -> bytes:
    total, pos = _read_u64(blob, 0)
    indptr_raw, pos = _read_chunk(blob, pos, 8)
    _, pos = _read_chunk(blob, pos, 8)
    pieces, cursor, swapped = [], 8, 0
    for _ in range(len(indptr_raw) // 8 - 1):
        kind, pos = _read_chunk(blob, pos)
        if kind == b"_lib":
            continue
        payload_start = pos
        payload, pos = _read_chunk(blob, pos)
        if kind == b"cuda":
            pieces += [blob[cursor:payload_start], _chunk(_swap_cuda_payload(payload, source,
                                                                              fatbin))]
            cursor, swapped = pos, swapped + 1
    if pos != 8 + total or swapped != 1:
        raise CompileError(f"Expected one CUDA module in the packed library and found "
                           f"{swapped}; the library layout is not the one forgeline knows.")
    body = b"".join(pieces) + blob[cursor:]  # everything after the size header
    return struct.pack("<Q", len(body)) + body


def packer_with_fatbin(source: bytes, fatbin: bytes):
    """An ``fpack_imports`` for export_library that embeds ``fatbin`` in place of ``source``.

    The rewritten blob goes in through the assembler's ``.incbin``, not a C array of hex bytes,
    so that a model whose weights run to gigabytes still links in seconds.
    """

    def pack(module, is_system_lib, prefix, workspace_dir):
        from tvm.runtime import _ffi_api

        if is_system_lib:
            raise CompileError("A system-lib CUDA build cannot embed a fatbin here; build a "
                               "shared library (the default).")
        blob = _ffi_api.ModulePackImportsToTensor(module).numpy().tobytes()
        blob_path = Path(workspace_dir) / f"{prefix}devc.bin"
        blob_path.write_bytes(rewrite_library_bin(blob, source, fatbin))
        symbol = f"{prefix}{LIBRARY_BIN_SYMBOL}"
        asm_path = Path(workspace_dir) / f"{prefix}devc.S"
        asm_path.write_text(
            "\t.section .rodata\n"
            f"\t.globl {symbol}\n"
            f"\t.type {symbol}, @object\n"
            "\t.balign 16\n"
            f"{symbol}:\n"
            f"\t.incbin \"{blob_path}\"\n"
            f"\t.size {symbol}, .-{symbol}\n"
            "\t.section .note.GNU-stack,\"\",@progbits\n"
        )
        return str(asm_path)

    return pack




@dataclass(frozen=True)
class CudaPayload:
    fmt: str  # "fatbin" once rewritten, "cuda" (source) when no nvcc was found
    kernels: list[str]  # TVM's FunctionInfo map: the kernels the host side launches, by name
    code: bytes  # the fatbin, or the CUDA source


def packed_modules(blob: bytes) -> list[tuple[str, bytes]]:
    """(kind, payload) of each module in a packed library blob, "_lib" ones with no payload."""
    _, pos = _read_u64(blob, 0)
    indptr_raw, pos = _read_chunk(blob, pos, 8)
    _, pos = _read_chunk(blob, pos, 8)
    modules = []
    for _ in range(len(indptr_raw) // 8 - 1):
        kind, pos = _read_chunk(blob, pos)
        payload = b""
        if kind != b"_lib":
            payload, pos = _read_chunk(blob, pos)
        modules.append((kind.decode(), payload))
    return modules


def _function_names(payload: bytes, pos: int) -> tuple[list[str], int]:
    """Kernel names from TVM's FunctionInfo map: u64 count, then per kernel its key and a
    FunctionInfo (name, arg dtypes of 4 bytes, launch-param tag strings, i32 extra arg tags)."""
    count, pos = _read_u64(payload, pos)
    names = []
    for _ in range(count):
        key, pos = _read_chunk(payload, pos)
        _, pos = _read_chunk(payload, pos)  # FunctionInfo.name, the same as the key
        _, pos = _read_chunk(payload, pos, 4)  # argument dtypes
        tags, pos = _read_u64(payload, pos)
        for _ in range(tags):
            _, pos = _read_chunk(payload, pos)
        _, pos = _read_chunk(payload, pos, 4)  # extra argument tags
        names.append(key.decode())
    return names, pos


def read_cuda_payload(lib_path: Path) -> CudaPayload:
    """The CUDA module packed into an exported library, read from the file, not through TVM."""
    blob = elf_symbol_bytes(Path(lib_path).read_bytes(), LIBRARY_BIN_SYMBOL)
    cuda = [payload for kind, payload in packed_modules(blob) if kind == "cuda"]
    if len(cuda) != 1:
        raise CompileError(f"{lib_path} packs {len(cuda)} CUDA modules, not one.")
    fmt, pos = _read_chunk(cuda[0], 0)
    kernels, pos = _function_names(cuda[0], pos)
    code, end = _read_chunk(cuda[0], pos)
    if end != len(cuda[0]):
        raise CompileError(f"The CUDA payload of {lib_path} has {len(cuda[0]) - end} bytes after "
                           "its code; its layout is not the one forgeline knows.")
    return CudaPayload(fmt=fmt.decode(), kernels=kernels, code=code)
