"""Type checks of a parsed manifest.json, before any field is used.

A manifest is input like any other: a field of the wrong type (``files`` a list, dtype "int65",
``value_range`` [0], ``builds`` a list) is refused here with a sentence that names the field,
instead of failing later deep inside the runtime.
"""

from __future__ import annotations

from typing import Any

from .errors import ArtifactError

DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                    "uint8", "bool"})
BUILD_KINDS = frozenset({"llvm", "cuda"})
VM_MODES = ("compiled", "bytecode")  # BuildRecord.vm (compile/vm_exec.py)
BYTECODE_TAG = "-bytecode"  # ends the tag of a CPU build kept in bytecode (for profiling)
SOURCES = ("registry", "module", "onnx")  # format.SOURCE_REFERENCES' keys


def vm_tag(tag: str, kind: str, mode: str) -> str:
    """The build tag of a ``mode`` build of ``tag``: a CPU bytecode build's ends in -bytecode
    (before an emulated build's "emu", which the benchmarks look for at the end)."""
    if kind != "llvm" or mode != "bytecode":
        return tag
    emu = "emu" if tag.endswith("emu") else ""
    return tag.removesuffix("emu") + BYTECODE_TAG + emu


def _fail(where: str, what: str) -> ArtifactError:
    return ArtifactError(f"manifest.json has a malformed field: {where} {what}; the artifact is corrupt or edited, rebuild it.")


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                                         int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def expect(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = " or ".join(_kind(t()) if t is not type(None) else "null" for t in _as_tuple(types))
        raise _fail(where, f"must be {names}, not {_kind(value)}")
    return value


def _as_tuple(types) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _str_map(value: Any, where: str) -> dict[str, str]:
    for key, item in expect(value, dict, where).items():
        expect(item, str, f"{where}[{key!r}]")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    for i, item in enumerate(expect(value, list, where)):
        expect(item, str, f"{where}[{i}]")
    return value


def check_tensor(d: Any, where: str) -> None:
    expect(d, dict, where)
    for key in ("name", "dtype", "dims"):
        if key not in d:
            raise _fail(where, f"lacks {key!r}")
    expect(d["name"], str, f"{where}.name")
    if expect(d["dtype"], str, f"{where}.dtype") not in DTYPES:
        raise _fail(f"{where}.dtype", f"is {d['dtype']!r}, which is not one of {', '.join(sorted(DTYPES))}")
    for i, dim in enumerate(expect(d["dims"], list, f"{where}.dims")):
        if isinstance(expect(dim, (str, int), f"{where}.dims[{i}]"), int) and dim < 0:
            raise _fail(f"{where}.dims[{i}]", f"is {dim}, a negative size")
    rng = d.get("value_range")
    if rng is not None:
        expect(rng, list, f"{where}.value_range")
        if len(rng) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in rng) or rng[0] >= rng[1]:
            raise _fail(f"{where}.value_range", f"is {rng}, not [lo, hi] with integers lo < hi")


def _check_tensors(value: Any, where: str) -> None:
    for i, spec in enumerate(expect(value, list, where)):
        check_tensor(spec, f"{where}[{i}]")


def check_build(d: Any, where: str) -> None:
    expect(d, dict, where)
    for key, types in (("tag", str), ("kind", str), ("target", dict), ("requires", dict), ("lib", str)):
        if key not in d:
            raise _fail(where, f"lacks {key!r}")
        expect(d[key], types, f"{where}.{key}")
    if d["kind"] not in BUILD_KINDS:
        raise _fail(f"{where}.kind", f"is {d['kind']!r}, not one of {', '.join(sorted(BUILD_KINDS))}")
    if expect(d.get("vm", "bytecode"), str, f"{where}.vm") not in VM_MODES:
        raise _fail(f"{where}.vm", f"is {d['vm']!r}, not one of {', '.join(VM_MODES)}")
    _str_map(d.get("graph_libs", {}), f"{where}.graph_libs")
    expect(d.get("params_file", ""), str, f"{where}.params_file")
    for lib, keys in expect(d.get("lib_params", {}), dict, f"{where}.lib_params").items():
        _str_list(keys, f"{where}.lib_params[{lib!r}]")
    for i, layer in enumerate(expect(d.get("dense_layers", []), list, f"{where}.dense_layers")):
        expect(layer, str, f"{where}.dense_layers[{i}]")
    for key, bucket in expect(d.get("buckets", {}), dict, f"{where}.buckets").items():
        expect(bucket, dict, f"{where}.buckets[{key!r}]")
        expect(bucket.get("lib"), str, f"{where}.buckets[{key!r}].lib")
        _str_list(bucket.get("params", []), f"{where}.buckets[{key!r}].params")
        expect(bucket.get("params_file", ""), str, f"{where}.buckets[{key!r}].params_file")
        for dim, size in expect(bucket.get("dims"), dict, f"{where}.buckets[{key!r}].dims").items():
            expect(size, int, f"{where}.buckets[{key!r}].dims[{dim!r}]")


def check_manifest_dict(d: dict[str, Any]) -> None:
    """Raise ArtifactError naming the first field whose type is wrong."""
    for key in ("name", "preset", "family"):
        expect(d.get(key), str, key)
    expect(d.get("config"), dict, "config")
    _check_tensors(d.get("inputs"), "inputs")
    _check_tensors(d.get("outputs"), "outputs")
    for dim, limit in expect(d.get("dim_limits"), dict, "dim_limits").items():
        if expect(limit, (int, type(None)), f"dim_limits[{dim!r}]") is not None and limit < 1:
            raise _fail(f"dim_limits[{dim!r}]", f"is {limit}, not a positive size")
    tol = expect(d.get("tolerance"), dict, "tolerance")
    for key in ("atol", "rtol"):
        if expect(tol.get(key), (int, float), f"tolerance.{key}") < 0 or tol[key] != tol[key]:
            raise _fail(f"tolerance.{key}", f"is {tol[key]}, not a number >= 0")
    _str_map(d.get("files"), "files")
    for key in ("stages", "builds", "graphs", "versions"):
        expect(d.get(key, {}), dict, key)
    expect(d.get("golden_cases", []), list, "golden_cases")
    for tag, build in d.get("builds", {}).items():
        check_build(build, f"builds[{tag!r}]")
    for name, graph in d.get("graphs", {}).items():
        expect(graph, dict, f"graphs[{name!r}]")
        expect(graph.get("onnx"), str, f"graphs[{name!r}].onnx")
        _check_tensors(graph.get("inputs"), f"graphs[{name!r}].inputs")
        _check_tensors(graph.get("outputs"), f"graphs[{name!r}].outputs")
    expect(d.get("tokenizer"), (str, type(None)), "tokenizer")
    if expect(d.get("source", "registry"), str, "source") not in SOURCES:
        raise _fail("source", f"is {d['source']!r}, not one of {', '.join(SOURCES)}")


__all__ = ["check_manifest_dict", "check_tensor"]
