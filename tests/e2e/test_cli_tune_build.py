"""`forgeline tune` picks the CPU build to tune: the fp32 one, the only one, or the one --precision names."""

import pytest

from forgeline.cli.tune import cpu_build_tag
from forgeline.runtime.errors import ConfigError

BASE = "cpu-znver4"


def test_the_fp32_build_by_default():
    assert cpu_build_tag([BASE, f"{BASE}-bf16", "cuda-sm90"], BASE, None) == BASE


def test_the_only_build_for_this_cpu():
    # an artifact compiled with --precision bf16 alone has no fp32 CPU build
    assert cpu_build_tag([f"{BASE}-bf16", "cpu-emeraldrapids"], BASE, None) == f"{BASE}-bf16"


def test_precision_names_the_build():
    tags = [f"{BASE}-bf16", f"{BASE}-int8"]
    assert cpu_build_tag(tags, BASE, "int8") == f"{BASE}-int8"
    assert cpu_build_tag(tags, BASE, "fp32") == BASE  # tune_artifact then says it is missing


def test_several_reduced_builds_ask_for_a_precision():
    with pytest.raises(ConfigError, match="--precision"):
        cpu_build_tag([f"{BASE}-bf16", f"{BASE}-int8"], BASE, None)


def test_another_cpus_builds_are_not_this_ones():
    assert cpu_build_tag(["cpu-znver4x-bf16"], "cpu-znver4x", None) == "cpu-znver4x-bf16"
    assert cpu_build_tag(["cpu-znver45-bf16"], BASE, None) == BASE  # no build for this CPU
