"""Compile targets: presets, the host CPU's LLVM name, and what a build requires of a host."""

import pytest

from forgeline.compile.targets import PRESETS, TargetSpec, resolve_target
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.host import HostInfo, can_run, cpu_core_count, describe_host


def test_cpu_preset_names_the_host_cpu_and_its_cores():
    from tvm.target import Target, codegen

    spec = resolve_target("cpu")
    assert spec.kind == "llvm"
    assert spec.target["mcpu"] == str(codegen.llvm_get_system_cpu())
    assert spec.target["mcpu"] not in ("native", "generic", "")
    assert spec.tag == "cpu-" + spec.target["mcpu"]
    assert spec.target["num-cores"] == cpu_core_count()
    Target(spec.target)  # TVM accepts the dict form
    # The build host runs its own build: every required ISA flag is one /proc/cpuinfo lists.
    host = describe_host()
    assert spec.requires["arch"] == host.arch
    if host.cpu_features:
        assert set(spec.requires["cpu_features"]) <= host.cpu_features
    assert can_run(spec.requires, host)[0]


def test_explicit_mcpu_sets_features_from_llvm_not_from_this_host():
    spec = resolve_target("cpu", mcpu="x86-64-v3", num_cores=4)
    if spec.requires["arch"] != "x86_64":
        pytest.skip("x86 feature names are checked on x86 hosts only")
    assert spec.tag == "cpu-x86-64-v3"
    assert spec.target["num-cores"] == 4
    assert {"avx2", "fma"} <= set(spec.requires["cpu_features"])
    assert "avx512f" not in spec.requires["cpu_features"]


def test_cuda_preset_and_round_trip():
    spec = resolve_target("cuda")
    assert spec.tag == "cuda-sm90"
    assert spec.target["kind"] == "cuda" and spec.target["arch"] == "sm_90"
    assert spec.target["host"]["kind"] == "llvm"
    assert spec.requires["device"] == "cuda" and spec.requires["sm"] == 90
    assert TargetSpec.from_dict(spec.to_dict()) == spec
    assert resolve_target("cuda", arch="sm_80").requires["sm"] == 80


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        resolve_target("tpu")
    for preset in PRESETS:
        assert preset in str(err.value)


@pytest.mark.parametrize("kwargs", [{"preset": "cuda", "arch": "ampere"},
                                    {"preset": "cpu", "arch": "sm_90"},
                                    {"preset": "cuda", "mcpu": "znver4"}])
def test_bad_overrides_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        resolve_target(**kwargs)


def test_can_run_refuses_cuda_without_a_device_and_missing_isa():
    no_gpu = HostInfo(arch="x86_64", cpu_features=frozenset({"avx2", "fma"}), cuda_devices=[])
    ok, why = can_run({"device": "cuda", "sm": 90}, no_gpu)
    assert not ok and "sm_90" in why and "no CUDA device" in why
    ok, why = can_run({"device": "cuda", "sm": 90}, HostInfo("x86_64", frozenset(), [80]))
    assert not ok and "sm_80" in why
    assert can_run({"device": "cuda", "sm": 90}, HostInfo("x86_64", frozenset(), [90]))[0]
    ok, why = can_run({"arch": "x86_64", "cpu_features": ["avx512f", "avx2"]}, no_gpu)
    assert not ok and "lacks avx512f" in why
    ok, why = can_run({"arch": "x86_64", "cpu_features": []}, HostInfo("aarch64", frozenset(), []))
    assert not ok and "aarch64" in why


def test_this_host_cannot_run_a_cuda_build_unless_it_has_a_gpu():
    host = describe_host()
    ok, why = can_run(resolve_target("cuda").requires, host)
    assert ok == any(cc >= 90 for cc in host.cuda_devices)
    if not host.cuda_devices:
        assert why.startswith("The build is for CUDA sm_90 but this host has no CUDA device")
        assert host.cuda_problem and host.cuda_problem in why  # names what is missing
