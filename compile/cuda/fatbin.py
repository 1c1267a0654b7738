"""Read what an NVIDIA fatbin holds, and the ELF files inside it, without NVIDIA's tools.

A fatbin is a header (magic 0xBA55ED50, u16 version, u16 header size, u64 body size) followed by
entries, each with its own header: u16 kind (1 PTX, 2 ELF/SASS), u16 version, u32 header size,
u64 payload size, ..., u32 arch (90 for sm_90) at byte 28, u64 flags at byte 40 (0x2000:
compressed). forgeline builds fatbins uncompressed (nvcc.compile_fatbin), so every kernel name can
be read: from the ELF's symbol table (FUNC symbols) and from the PTX's ``.entry`` lines.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

FATBIN_MAGIC = 0xBA55ED50
_KINDS = {1: "ptx", 2: "sass"}
_COMPRESSED = 0x2000


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "ptx" | "sass"
    arch: int  # 90 for sm_90 / compute_90
    compressed: bool
    kernels: frozenset = field(default_factory=frozenset)  # empty when compressed


def elf_symbols(elf: bytes) -> dict[str, tuple[int, int, int, int]]:
    """Symbol name -> (value, size, type, section index) of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    symbols = {}
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 24):
            name_off, info, _, shndx, value, sym_size = struct.unpack_from("<IBBHQQ", elf, pos)
            end = elf.index(b"\0", strtab_offset + name_off)
            name = elf[strtab_offset + name_off:end].decode(errors="replace")
            if name:
                symbols[name] = (value, sym_size, info & 0xF, shndx)
    return symbols


def elf_symbol_bytes(elf: bytes, name: str) -> bytes:
    """The bytes a data symbol of an ELF64 shared library points at (e.g. its packed modules)."""
    value, size, _, shndx = elf_symbols(elf)[name]
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, = struct.unpack_from("<H", elf, 0x3A)
    _, _, _, addr, offset, *_ = struct.unpack_from("<IIQQQQIIQQ", elf, shoff + shndx * shentsize)
    start = offset + value - addr
    return elf[start:start + size]


def _kernels(kind: str, payload: bytes) -> frozenset:
    if kind == "sass":
        return frozenset(name for name, (_, _, sym_type, _) in elf_symbols(payload).items()
                         if sym_type == 2)  # STT_FUNC
    return frozenset(n.decode() for n in re.findall(rb"\.entry\s+([A-Za-z_][\w$]*)\s*\(", payload))


def read_fatbin(data: bytes) -> list[FatbinEntry]:
    """The entries of a fatbin: what each one is, for which arch, and its kernels."""
    magic, _, header_size, body_size = struct.unpack_from("<IHHQ", data, 0)
    if magic != FATBIN_MAGIC:
        raise ValueError(f"not a fatbin (magic {magic:#x})")
    entries, pos, end = [], header_size, header_size + body_size
    while pos < end:
        kind, _, entry_header, payload_size = struct.unpack_from("<HHIQ", data, pos)
        arch, = struct.unpack_from("<I", data, pos + 28)
        flags, = struct.unpack_from("<Q", data, pos + 40)
        payload = data[pos + entry_header:pos + entry_header + payload_size]
        name = _KINDS.get(kind, f"kind{kind}")
        compressed = bool(flags & _COMPRESSED)
        kernels = frozenset() if compressed or name not in ("ptx", "sass") else _kernels(name, payload)
        entries.append(FatbinEntry(kind=name, arch=arch, compressed=compressed, kernels=kernels))
        pos += entry_header + payload_size
    return entries


__all__ = ["FATBIN_MAGIC", "FatbinEntry", "elf_symbol_bytes", "elf_symbols", "read_fatbin"]
