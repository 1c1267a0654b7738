"""Tuning an MoE model: the ragged grouped FFN (compile/cpu/moe_rows.py) inside a static bucket.

Its grouped block's row count is a runtime value even in a static-shape build. Written as
``tiles * 8`` it made the activation between the two grouped GEMMs a kernel that took the tile
count as an extra scalar, and FuseTIR failed on the fused group (``VarRemapGet(source) ==
nullptr``): ``forgeline tune`` could not tune any MoE artifact. The bucket must build, dispatch at
its shape and match eager PyTorch there.
"""

import shutil

from forgeline.compile.tuning import TuneOptions, tune_artifact
from forgeline.runtime.format import Manifest

BUCKET = "2x16"  # batch 2: a decoder group holds two tokens, so token choice leaves slots empty
TRIALS = 4


def test_a_token_choice_moe_bucket_tunes_and_matches_eager(tiny_artifact, tmp_path):
    from forgeline.check import check_artifact

    root = tmp_path / "gpt-moe-tc"
    shutil.copytree(tiny_artifact("gpt-moe-tc"), root)
    tag = next(iter(Manifest.load(root).builds))
    tune_artifact(root, tag, TuneOptions(buckets=BUCKET, trials=TRIALS, database=tmp_path / "db"))
    bucket = Manifest.load(root).builds[tag].buckets[BUCKET]
    assert {"moe_grouped_matmul_32x64", "moe_grouped_matmul_64x32"}.isdisjoint(bucket["tasks_tuned"])
    report = check_artifact(root, fresh_cases=1)
    stages = {s.stage: s for s in report.stages}
    assert stages[f"tvm/{tag}/{BUCKET}"].passed and report.passed
