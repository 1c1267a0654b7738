"""``--precision int8``: tiny builds against eager fp32, the manifest record, the kernel choice."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from forgeline.cli.app import main
from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.precision import kernel_precision, plan_precision, precision_target
from forgeline.compile.targets import TargetSpec
from forgeline.export import ExportOptions, export_model
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import GOLDEN_FILE, PRECISION_TOLERANCE, Manifest
from forgeline.runtime.golden import load_golden
from forgeline.runtime.host import HostInfo, can_run, read_cpu_features
from forgeline.runtime.model import load

HAS_AVX2 = "avx2" in read_cpu_features()
VNNI_HOST = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})
AVX2_HOST = frozenset({"avx", "avx2", "fma"})  # a Zen 3 / Haswell-like CPU


def _cpu_spec(features=("avx2",)) -> TargetSpec:
    return TargetSpec(tag="cpu-test", kind="llvm", target={"kind": "llvm", "mcpu": "znver3"},
                      requires={"arch": "x86_64", "cpu_features": list(features)})


def _worst_error(root, tag) -> float:
    """Max abs error of build ``tag``'s outputs against eager fp32 on the golden cases."""
    model, worst = load(root, target=tag), 0.0
    for case in load_golden(root / GOLDEN_FILE):
        got = model.run(**case.inputs)
        for name, want in case.outputs.items():
            if want.dtype.kind == "f":
                worst = max(worst, float(np.abs(got[name] - want).max()))
    return worst


@pytest.mark.skipif(not HAS_AVX2, reason="int8 needs AVX2 (or AVX512-VNNI) on this CPU")
def test_int8_gpt_with_generation_graphs_via_the_cli(generation_bundle, tmp_path, capsys,
                                                     assert_tied_table_stored_once):
    """compile --precision int8 and check, on the host's own kernel; prefill/decode checked too."""
    out = tmp_path / "gpt"
    shutil.copytree(generation_bundle("gpt"), out)
    assert main(["-q", "compile", str(out), "--precision", "int8"]) == 0
    manifest = Manifest.load(out)
    (tag,) = [t for t, b in manifest.builds.items() if b.precision == "int8"]
    build, tol = manifest.builds[tag], PRECISION_TOLERANCE["int8"]
    assert tag.endswith("-int8") and build.tolerance == {"atol": tol.atol, "rtol": tol.rtol}
    assert {"prefill", "decode"} <= set(build.graph_libs)
    stage = manifest.stages[f"tvm/{tag}"]  # measured against eager fp32, KV-cache graphs included
    assert stage.passed and stage.tolerance == tol
    assert any(row.case.endswith("/generation") for row in stage.parity)
    assert main(["-q", "check", str(out), "--fresh", "1"]) == 0
    assert "FAIL" not in capsys.readouterr().out
    # int8 really ran: fp32 kernels match eager to ~1e-6, int8 quantization leaves ~1e-3.
    assert _worst_error(out, tag) > 1e-4
    assert_tied_table_stored_once(out, build)


def test_emulated_int8_bert_moe_matches_eager_fp32(tmp_path):
    """The VNNI kernels' numerics in plain TIR loops, end to end, on any x86-64 host: dense
    layers, the MLM head and the MoE experts' grouped GEMM in int8, the routers in fp32."""
    from forgeline.compile.cpu.int8_layers import int8_dense_matmuls, int8_experts
    from forgeline.compile.cpu.moe_rows import compact_expert_rows
    from forgeline.compile.tvm_build import import_relax

    out = tmp_path / "bert-moe"
    export_model("bert-moe", out, ExportOptions(generation_graphs=False))
    mod = int8_dense_matmuls(import_relax(out / "model.onnx"), "int8-vnni-emulated")
    names = {gv.name_hint for gv in compact_expert_rows(mod, int8_experts("int8-vnni-emulated")).functions}
    assert any(name.startswith("moe_grouped_int8") for name in names)
    assert not any(name.startswith("moe_grouped_matmul") for name in names)  # no fp32 experts left
    manifest = compile_artifact(out, CompileOptions(precision="int8", emulate_int8=True))
    (tag,) = [t for t, b in manifest.builds.items() if b.precision == "int8"]
    assert tag.endswith("-int8emu") and manifest.stages[f"tvm/{tag}"].passed
    assert "emulated" in manifest.builds[tag].note
    assert _worst_error(out, tag) > 1e-4


def test_int8_kernel_follows_the_host_flags():
    spec = precision_target(_cpu_spec(), "int8", host_features=VNNI_HOST)
    assert spec.tag == "cpu-test-int8" and "+avx512vnni" in spec.target["mattr"]
    assert "avx512_vnni" in spec.requires["cpu_features"]
    assert kernel_precision("int8", False, spec) == "int8-vnni"
    ok, why = can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=AVX2_HOST))
    assert not ok and "avx512_vnni" in why  # a VNNI build is refused on a host without VNNI
    spec = precision_target(_cpu_spec(), "int8", host_features=AVX2_HOST | {"avx_vnni"})  # Alder Lake
    assert "+avxvnni" in spec.target["mattr"] and kernel_precision("int8", False, spec) == "int8-avxvnni"
    spec = precision_target(_cpu_spec(), "int8", host_features=AVX2_HOST)
    assert "+avx512vnni" not in spec.target["mattr"] and kernel_precision("int8", False, spec) == "int8-avx2"
    assert kernel_precision("int8", True, _cpu_spec()) == "int8-vnni-emulated"
    with pytest.raises(ConfigError, match="int8 needs a CPU with AVX2"):
        precision_target(_cpu_spec(), "int8", host_features=frozenset({"sse4_2"}))


def test_cross_compiled_int8_follows_the_mcpu_features():
    cross = precision_target(_cpu_spec(["avx2", "avx512f", "avx512bw", "avx512_vnni"]), "int8",
                             host_features=None)
    assert kernel_precision("int8", False, cross) == "int8-vnni"
    cross = precision_target(_cpu_spec(["avx2", "fma"]), "int8", host_features=None)
    assert kernel_precision("int8", False, cross) == "int8-avx2"


AMX_HOST = VNNI_HOST | {"amx_tile", "amx_int8", "amx_bf16"}  # Sapphire Rapids and later


def test_int8_kernel_on_an_amx_host_is_amx_unless_vnni_is_forced():
    spec = precision_target(_cpu_spec(), "int8", host_features=AMX_HOST)
    assert spec.tag == "cpu-test-int8" and kernel_precision("int8", False, spec) == "int8-amx"
    plan = plan_precision(_cpu_spec(), "int8", host_features=AMX_HOST, int8_kernel="vnni")
    assert plan.spec.tag == "cpu-test-int8-vnni" and plan.kernels == "int8-vnni"  # beside the AMX build
    assert "amx_tile" not in plan.spec.requires["cpu_features"]  # runs on VNNI-only hosts too
    plan = plan_precision(_cpu_spec(), "int8", host_features=AMX_HOST)
    assert plan.spec.tag == "cpu-test-int8" and plan.kernels == "int8-amx"
    assert {"+amx-int8", "+amx-tile", "+avx512vnni"} <= set(plan.spec.target["mattr"])
    assert {"amx_int8", "amx_tile", "avx512_vnni"} <= set(plan.spec.requires["cpu_features"])  # the runtime asks for tiles
    ok, why = can_run(plan.spec.requires, HostInfo(arch="x86_64", cpu_features=VNNI_HOST))
    assert not ok and "amx" in why  # an AMX build is refused on a VNNI-only host
    plan = plan_precision(_cpu_spec(), "int8", host_features=None, emulate=True, int8_kernel="amx")
    assert plan.spec.tag == "cpu-test-int8-amxemu" and plan.kernels == "int8-amx-emulated"
    with pytest.raises(ConfigError, match="amx int8 kernel needs amx_int8, amx_tile"):
        plan_precision(_cpu_spec(), "int8", host_features=VNNI_HOST, int8_kernel="amx")


def test_int8_gpt_on_the_amx_kernel_matches_eager_fp32(tmp_path):
    """The AMX int8 kernel end to end; with the tile steps emulated on hosts without AMX-INT8."""
    from forgeline.compile.cpu.amx_int8 import AMX_INT8

    emulate = not set(AMX_INT8.cpu_features) <= read_cpu_features()
    out = tmp_path / "gpt"
    export_model("gpt", out, ExportOptions(generation_graphs=False))
    manifest = compile_artifact(out, CompileOptions(precision="int8", int8_kernel="amx", emulate_int8=emulate))
    (tag,) = [t for t, b in manifest.builds.items() if b.precision == "int8"]
    # on AMX-INT8 hosts AMX is the CPU's own kernel, so the tag names no kernel
    assert tag.endswith("-int8-amxemu" if emulate else "-int8") and "AMX kernel" in manifest.builds[tag].note
    assert manifest.stages[f"tvm/{tag}"].passed  # against eager fp32 within PRECISION_TOLERANCE["int8"]
    assert _worst_error(out, tag) > 1e-4  # int8 really ran
