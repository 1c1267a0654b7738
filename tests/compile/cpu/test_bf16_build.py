"""``--precision bf16``: tiny builds against eager fp32, the manifest record, the kernel per CPU and\nthe refusal of a CPU with neither AMX nor AVX512-BF16."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.artifact import resolve_precision_plan
from forgeline.compile.precision import precision_target, require_amx_host, require_bf16_host
from forgeline.compile.targets import TargetSpec
from forgeline.export import ExportOptions, export_model
from forgeline.runtime.errors import ConfigError, TargetMismatchError
from forgeline.runtime.format import GOLDEN_FILE, PRECISION_TOLERANCE, ROUTING_PREFIX
from forgeline.runtime.golden import load_golden
from forgeline.runtime.host import HostInfo, can_run, read_cpu_features
from forgeline.runtime.model import load

HAS_AMX = {"amx_bf16", "amx_tile"} <= read_cpu_features()
HAS_DPBF16 = {"avx512f", "avx512_bf16"} <= read_cpu_features()
NEITHER = frozenset({"avx2", "fma"})  # a Zen 3-like CPU: no bf16 instructions at all
NO_AMX = frozenset({"avx2", "avx512f", "avx512_bf16"})  # a Zen 4-like CPU: bf16 dot, no tiles
WITH_AMX = NO_AMX | {"amx_bf16", "amx_tile"}


@pytest.fixture(scope="module")
def moe_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "gpt-moe"
    export_model("gpt-moe", out, ExportOptions(generation_graphs=False))
    return out


def _cpu_spec() -> TargetSpec:
    return TargetSpec(tag="cpu-test", kind="llvm", target={"kind": "llvm", "mcpu": "znver4"},
                      requires={"arch": "x86_64", "cpu_features": ["avx2"]})


def _check_against_eager(bundle, tag: str) -> None:
    tol = PRECISION_TOLERANCE["bf16"]
    model = load(bundle, target=tag)
    worst = 0.0
    for case in load_golden(bundle / GOLDEN_FILE):  # outputs of eager fp32 PyTorch
        got = model.run(**case.inputs)
        want = case.outputs["logits"]  # (B, T, V)
        assert np.allclose(got["logits"], want, atol=tol.atol, rtol=tol.rtol)
        assert np.array_equal(got["logits"].argmax(-1), want.argmax(-1))  # top-1 agreement
        for name in (n for n in case.outputs if n.startswith(ROUTING_PREFIX)):
            assert np.array_equal(got[name], case.outputs[name])  # routers stayed fp32
        worst = max(worst, float(np.abs(got["logits"] - want).max()))
    # bf16 really ran: fp32 kernels match eager to ~1e-6 here, bf16 rounding leaves ~1e-3.
    assert worst > 1e-5


def test_emulated_bf16_build_matches_eager_fp32_within_bf16_tolerance(moe_bundle, assert_tied_table_stored_once):
    manifest = compile_artifact(moe_bundle, CompileOptions(precision="bf16", emulate_amx=True))
    (tag,) = [t for t, b in manifest.builds.items() if t.endswith("-bf16emu")]  # the AMX emulation
    build = manifest.builds[tag]
    tol = PRECISION_TOLERANCE["bf16"]
    assert build.tolerance == {"atol": tol.atol, "rtol": tol.rtol}
    assert manifest.stages[f"tvm/{tag}"].passed
    assert manifest.stages[f"tvm/{tag}"].tolerance == tol
    _check_against_eager(moe_bundle, tag)
    assert_tied_table_stored_once(moe_bundle, build)


def test_amx_decode_graph_runs_vdpbf16ps_on_the_amx_panels_stored_once(generation_bundle, tmp_path):
    """An AMX bf16 build (emulated here, so on any host) keeps AMX tiles for main and prefill and
    gives its decode graph (one row per sequence) the vdpbf16ps kernel reading the same packed
    weights; checked against eager fp32, generation included, and every weight stored once."""
    from safetensors.numpy import load_file

    out = tmp_path / "gpt"
    shutil.copytree(generation_bundle("gpt"), out)
    manifest = compile_artifact(out, CompileOptions(precision="bf16", emulate_amx=True))
    (tag,) = [t for t in manifest.builds if t.endswith("-bf16emu")]
    build = manifest.builds[tag]
    stage = manifest.stages[f"tvm/{tag}"]
    assert stage.passed and any(row.case.endswith("/generation") for row in stage.parity)
    decode = (out / build.graph_libs["decode"]).read_bytes()
    assert b"avx512bf16_amx_panels_dense" in decode and b"amx_dense" not in decode
    assert b"amx_dense" in (out / build.lib).read_bytes()
    stored = {k: v for k, v in load_file(str(out / build.params_file)).items() if not k.startswith("__pad")}
    assert len({(a.dtype.str, a.shape, a.tobytes()) for a in stored.values()}) == len(stored)
    assert set(build.lib_params[build.graph_libs["decode"]]) <= set(build.lib_params[build.lib])


def test_bf16_kernel_follows_the_cpu_and_a_cpu_without_either_is_refused():
    assert require_bf16_host(WITH_AMX, "sapphirerapids") == "amx"
    assert require_bf16_host(NO_AMX, "znver4") == "avx512bf16"
    assert require_bf16_host(WITH_AMX, "sapphirerapids", "avx512bf16") == "avx512bf16"  # forced
    with pytest.raises(ConfigError, match=r"needs a CPU with AVX512-BF16 .* or AMX .* neither: build fp32"):
        require_bf16_host(NEITHER, "znver3")
    with pytest.raises(ConfigError, match="needs amx_bf16, amx_tile, which the CPU znver4 lacks"):
        require_amx_host(NO_AMX, "znver4")
    with pytest.raises(ConfigError, match="neither"):
        precision_target(_cpu_spec(), "bf16", host_features=NEITHER)


def test_bf16_target_records_amx_requirements_and_a_host_without_them_is_refused():
    spec = precision_target(_cpu_spec(), "bf16", host_features=WITH_AMX)
    assert spec.tag == "cpu-test-bf16"
    assert {"+amx-tile", "+amx-bf16"} <= set(spec.target["mattr"])
    assert {"amx_bf16", "amx_tile", "avx2"} <= set(spec.requires["cpu_features"])
    ok, why = can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=NO_AMX))
    assert not ok and "amx_bf16, amx_tile" in why
    assert can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=WITH_AMX))[0]
    assert precision_target(_cpu_spec(), "fp32", host_features=NO_AMX) == _cpu_spec()


def test_bf16_target_without_amx_records_avx512_bf16_requirements():
    spec = precision_target(_cpu_spec(), "bf16", host_features=NO_AMX)
    assert spec.tag == "cpu-test-bf16" and "+avx512bf16" in spec.target["mattr"]
    assert not {"+amx-tile", "+amx-bf16"} & set(spec.target["mattr"])
    assert {"avx512f", "avx512_bf16"} <= set(spec.requires["cpu_features"])
    ok, why = can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=NEITHER))
    assert not ok and "avx512_bf16" in why
    forced = precision_target(_cpu_spec(), "bf16", host_features=WITH_AMX, bf16_kernel="avx512bf16")
    assert forced.tag == "cpu-test-bf16-avx512bf16"  # not the AMX build's tag


def test_mcpu_cross_compiles_bf16_for_the_other_kind_of_host():
    zen4 = resolve_precision_plan(CompileOptions(precision="bf16", mcpu="znver4"))
    assert (zen4.spec.tag, zen4.kernels) == ("cpu-znver4-bf16", "bf16-avx512bf16")
    assert "avx512_bf16" in zen4.spec.requires["cpu_features"]
    assert "amx_tile" not in zen4.spec.requires["cpu_features"]
    spr = resolve_precision_plan(CompileOptions(precision="bf16", mcpu="sapphirerapids"))
    assert (spr.spec.tag, spr.kernels) == ("cpu-sapphirerapids-bf16", "bf16")
    with pytest.raises(ConfigError, match="CPU x86-64-v3 has neither"):
        resolve_precision_plan(CompileOptions(precision="bf16", mcpu="x86-64-v3"))


def test_avx512_bf16_build_matches_eager_fp32_within_bf16_tolerance(moe_bundle, assert_tied_table_stored_once):
    """The vdpbf16ps kernel where the CPU has it, its TIR emulation elsewhere."""
    options = CompileOptions(precision="bf16", bf16_kernel="avx512bf16", emulate_amx=not HAS_DPBF16)
    manifest = compile_artifact(moe_bundle, options)
    (tag,) = [t for t, b in manifest.builds.items() if "avx512bf16" in t]
    assert manifest.stages[f"tvm/{tag}"].passed
    if HAS_DPBF16:
        lib = moe_bundle / manifest.builds[tag].lib
        asm = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True).stdout
        assert "vdpbf16ps" in asm
    _check_against_eager(moe_bundle, tag)
    assert_tied_table_stored_once(moe_bundle, manifest.builds[tag])


def test_cross_compiled_amx_build_is_recorded_and_gated_by_the_host(moe_bundle):
    manifest = compile_artifact(moe_bundle, CompileOptions(precision="bf16", mcpu="sapphirerapids"))
    build = manifest.builds["cpu-sapphirerapids-bf16"]
    assert build.precision == "bf16" and {"amx_bf16", "amx_tile"} <= set(build.requires["cpu_features"])
    if not HAS_AMX:
        assert "tvm/cpu-sapphirerapids-bf16" not in manifest.stages  # not checked here
        with pytest.raises(TargetMismatchError, match="amx"):
            load(moe_bundle, target="cpu-sapphirerapids-bf16")
        return
    stage = manifest.stages["tvm/cpu-sapphirerapids-bf16"]  # checked against eager fp32
    assert stage.passed and stage.tolerance == PRECISION_TOLERANCE["bf16"]


@pytest.mark.parametrize("switch", ["bf16", "bf16-avx512bf16"])
def test_bf16_builds_run_the_experts_on_the_grouped_bf16_gemm(moe_bundle, switch):
    """The MoE experts take bf16 (AMX or vdpbf16ps grouped GEMM), the routers stay fp32."""
    from forgeline.compile.cpu.bf16 import bf16_dense_matmuls
    from forgeline.compile.cpu.bf16_moe import bf16_experts
    from forgeline.compile.cpu.moe_rows import compact_expert_rows
    from forgeline.compile.tvm_build import import_relax

    kernel = "avx512bf16" if "avx512bf16" in switch else "amx"
    mod = bf16_dense_matmuls(import_relax(moe_bundle / "model.onnx"), kernel=kernel)
    names = {gv.name_hint for gv in compact_expert_rows(mod, bf16_experts(switch)).functions}
    assert any(name.startswith(f"moe_grouped_{kernel}_") for name in names)
    assert not any(name.startswith("moe_grouped_matmul") for name in names)  # no fp32 experts left
