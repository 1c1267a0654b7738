"""Experts on their filled slots only (compile/cpu/moe_rows.py), on the graph the exporter writes.

``Experts.dispatch`` (define/moe.py) is exported as it is in every MoE model: gather the slots'
tokens (-1 = empty), the E FFNs, the combine matmul. The CPU build rewrites the FFNs to run on
the filled slots only; its output must equal eager PyTorch's for any routing, including an
expert that holds every slot, an expert that holds none, and a block with no filled slot.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from forgeline.define import get_config
from forgeline.define.moe import Experts

EXPERTS, WIDTH, HIDDEN = 4, 32, 64  # whole 32-column panels, as the grouped kernel needs
RNG = np.random.default_rng(11)


class Dispatch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        config = get_config("gpt-moe", "tiny", n_experts=EXPERTS, d_model=WIDTH, d_ff=HIDDEN, dropout=0.0)
        self.experts = Experts(config)
        for p in self.experts.parameters():
            torch.nn.init.normal_(p, std=0.5)

    def forward(self, xg, token, combine):
        return self.experts.dispatch(xg, token, combine)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Dispatch().eval()


@pytest.fixture(scope="module")
def compiled(model, tmp_path_factory):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.moe_rows import compact_expert_rows
    from forgeline.compile.cpu.pipeline import cpu_pipeline
    from forgeline.compile.tvm_build import import_relax

    path = tmp_path_factory.mktemp("moe_rows") / "model.onnx"
    xg, token, combine = _routing(3, 5, 2, fill=0.5)
    dims = ({0: torch.export.Dim("G"), 1: torch.export.Dim("n")}, {0: torch.export.Dim("G"), 2: torch.export.Dim("s")},
            {0: torch.export.Dim("G"), 1: torch.export.Dim("n"), 2: torch.export.Dim("Es")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(xg), torch.from_numpy(token), torch.from_numpy(combine)), str(path),
                          dynamo=True, dynamic_shapes=dims, verbose=False)
    mod = import_relax(path)
    rewritten = compact_expert_rows(mod)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    executable = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))
    return rewritten, relax.VirtualMachine(executable, tvm.cpu())


def _routing(groups: int, n: int, slots: int, fill: float, only_expert: int | None = None):
    """Random xg (G, n, D), token (G, E, s) with -1 for empty slots, combine (G, n, E*s) with weights
    only where a slot holds that token."""
    xg = RNG.standard_normal((groups, n, WIDTH)).astype(np.float32)
    token = np.full((groups, EXPERTS, slots), -1, np.int64)
    combine = np.zeros((groups, n, EXPERTS * slots), np.float32)
    for g in range(groups):
        for e in range(EXPERTS):
            if only_expert is not None and e != only_expert:
                continue
            for r in range(slots):
                if RNG.random() < fill:
                    t = int(RNG.integers(n))
                    token[g, e, r] = g * n + t
                    combine[g, t, e * slots + r] = RNG.random()
    return xg, token, combine


def test_the_cpu_build_rewrites_the_expert_chain(compiled):
    rewritten, _ = compiled
    names = {gv.name_hint for gv in rewritten.functions}
    assert {"moe_expert_counts", "moe_pack_rows", f"moe_combine_rows_{WIDTH}", f"moe_grouped_matmul_{WIDTH}x{HIDDEN}",
            f"moe_grouped_matmul_{HIDDEN}x{WIDTH}"} <= names
    script = rewritten["main"].script(show_meta=False)
    assert "gather_nd" not in script  # the padded gather is gone, not kept beside the new path
    # The combine reads the grouped rows: no (E, M, D) slot block is written, re-laid out or multiplied.
    assert "moe_unpack_rows" not in names and "R.matmul" not in script


def test_a_width_off_the_panels_keeps_the_padded_chain(tmp_path):
    """N = 48 is not whole 32-column panels: the chain stays as exported (and still compiles)."""
    from forgeline.compile.cpu.moe_rows import compact_expert_rows
    from forgeline.compile.tvm_build import import_relax

    config = get_config("gpt-moe", "tiny", n_experts=EXPERTS, d_model=WIDTH, d_ff=48, dropout=0.0)
    module = Dispatch()
    module.experts = Experts(config)
    xg, token, combine = (torch.from_numpy(a) for a in _routing(3, 5, 2, fill=0.5))
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (xg, token, combine), str(path), dynamo=True, verbose=False)
    names = {gv.name_hint for gv in compact_expert_rows(import_relax(path)).functions}
    assert not any(name.startswith("moe_") for name in names)


@pytest.mark.parametrize("groups,n,slots,fill,only_expert", [
    (3, 5, 2, 0.5, None),  # the traced shape, half the slots filled
    (7, 3, 4, 0.2, None),  # other sizes from the same graph, mostly empty (a decoder's token choice)
    (2, 9, 3, 1.0, None),  # every slot filled (expert choice): nothing to skip
    (4, 6, 5, 0.9, 2),  # one expert holds the slots, the others none
    (2, 4, 3, 0.0, None),  # no slot filled at all
    (12, 4, 4, 0.9, None),  # ~43 rows per expert: several 8-row tiles each, the last one partial
    (20, 5, 5, 0.8, None),  # ~80 rows per expert: ~40 tiles, about ten per expert, the last one partial
])
def test_outputs_equal_eager(model, compiled, groups, n, slots, fill, only_expert):
    import tvm

    _, vm = compiled
    xg, token, combine = _routing(groups, n, slots, fill, only_expert)
    with torch.no_grad():
        want = model(torch.from_numpy(xg), torch.from_numpy(token), torch.from_numpy(combine)).numpy()
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (xg, token, combine))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
