"""``--precision bf16``: tiny builds against eager fp32, the manifest record, refusal without AMX."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.cpu.precision import precision_target, require_amx_host
from forgeline.compile.targets import TargetSpec
from forgeline.export import ExportOptions, export_model
from forgeline.runtime.errors import ConfigError, TargetMismatchError
from forgeline.runtime.format import GOLDEN_FILE, PRECISION_TOLERANCE, ROUTING_PREFIX
from forgeline.runtime.golden import load_golden
from forgeline.runtime.host import HostInfo, can_run, read_cpu_features
from forgeline.runtime.model import load

HAS_AMX = {"amx_bf16", "amx_tile"} <= read_cpu_features()
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


def test_emulated_bf16_build_matches_eager_fp32_within_bf16_tolerance(moe_bundle):
    manifest = compile_artifact(moe_bundle, CompileOptions(precision="bf16", emulate_amx=True))
    (tag,) = [t for t, b in manifest.builds.items() if b.precision == "bf16"]
    build = manifest.builds[tag]
    tol = PRECISION_TOLERANCE["bf16"]
    assert build.tolerance == {"atol": tol.atol, "rtol": tol.rtol}
    assert manifest.stages[f"tvm/{tag}"].passed
    assert manifest.stages[f"tvm/{tag}"].tolerance == tol
    model = load(moe_bundle, target=tag)
    worst = 0.0
    for case in load_golden(moe_bundle / GOLDEN_FILE):  # outputs of eager fp32 PyTorch
        got = model.run(**case.inputs)
        want = case.outputs["logits"]  # (B, T, V)
        assert np.allclose(got["logits"], want, atol=tol.atol, rtol=tol.rtol)
        assert np.array_equal(got["logits"].argmax(-1), want.argmax(-1))  # top-1 agreement
        for name in (n for n in case.outputs if n.startswith(ROUTING_PREFIX)):
            assert np.array_equal(got[name], case.outputs[name])  # routers stayed fp32
        worst = max(worst, float(np.abs(got["logits"] - want).max()))
    # bf16 really ran: fp32 kernels match eager to ~1e-6 here, bf16 rounding leaves ~1e-3.
    assert worst > 1e-5


def test_bf16_refused_on_a_host_without_amx():
    with pytest.raises(ConfigError, match="needs a CPU with AMX"):
        require_amx_host(NO_AMX, "znver4")
    with pytest.raises(ConfigError, match="lacks amx_bf16, amx_tile"):
        precision_target(_cpu_spec(), "bf16", host_features=NO_AMX)
    require_amx_host(WITH_AMX, "sapphirerapids")  # no error


def test_bf16_target_records_amx_requirements_and_a_host_without_them_is_refused():
    spec = precision_target(_cpu_spec(), "bf16", host_features=WITH_AMX)
    assert spec.tag == "cpu-test-bf16"
    assert {"+amx-tile", "+amx-bf16"} <= set(spec.target["mattr"])
    assert {"amx_bf16", "amx_tile", "avx2"} <= set(spec.requires["cpu_features"])
    ok, why = can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=NO_AMX))
    assert not ok and "amx_bf16, amx_tile" in why
    assert can_run(spec.requires, HostInfo(arch="x86_64", cpu_features=WITH_AMX))[0]
    assert precision_target(_cpu_spec(), "fp32", host_features=NO_AMX) == _cpu_spec()


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
