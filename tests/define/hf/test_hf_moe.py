"""Mixtral and Qwen2-MoE checkpoints on forgeline's own MoE layer: dropless token-choice top-k
(Mixtral renormalises the k gate values, this Qwen2-MoE config does not), gated SwiGLU experts,
Qwen2-MoE's sigmoid-gated shared expert and its dense layers between sparse ones.

The experts each token takes are compared with the top-k of transformers' own router logits;
logits and greedy tokens with transformers' own. The compiled Mixtral runs its experts on the
CPU build's sparse grouped GEMM (compile/cpu/moe_rows.py), checked here by the rewrite count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from forgeline.define.hf_import import load_hf_checkpoint

from .hf_fixtures import ATOL, RTOL, hf_greedy, save_reference
from .test_hf_llama import _greedy_kv

VOCAB, STEPS = 120, 24
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
               rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
_ARCHS = {
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       num_experts=6, num_experts_per_tok=2, decoder_sparse_step=2, norm_topk_prob=False)),
}


@pytest.fixture(scope="session")
def hf_moe(tmp_path_factory):
    made = {}

    def get(arch: str):
        if arch not in made:
            config_class, model_class, extra = _ARCHS[arch]
            made[arch] = save_reference(model_class, config_class(**_COMMON, **extra), 31 + len(made),
                                        tmp_path_factory.mktemp(f"hf-{arch}"))
        return made[arch]

    return get


def _hf_experts(reference, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per MoE layer, the experts transformers' router picks for each token, sorted: (B*T, k)."""
    with torch.no_grad():
        router_logits = reference(input_ids=ids, output_router_logits=True).router_logits
    k = reference.config.num_experts_per_tok
    return [r.topk(k, dim=-1).indices.sort(-1).values for r in router_logits]


def _our_experts(routing: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, E) 0/1 routing -> (B*T, k) expert indices, sorted (each token must have exactly k)."""
    routing = torch.as_tensor(np.asarray(routing)).reshape(-1, routing.shape[-1])
    assert (routing.sum(-1) == k).all()  # dropless: every token kept by exactly k experts
    return routing.nonzero()[:, 1].reshape(-1, k)


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
@torch.no_grad()
def test_eager_logits_experts_and_greedy_tokens_match_transformers(hf_moe, arch):
    reference, folder = hf_moe(arch)
    ours = load_hf_checkpoint(folder)
    c = ours.config
    assert (c.router, c.router_top_k, c.gated_ffn) == ("token_choice", 2, True)
    assert c.router_norm_topk == (arch == "mixtral") and bool(c.shared_expert_d_ff) == (arch == "qwen2_moe")
    assert len(ours.moe_layers()) == (2 if arch == "mixtral" else 1)  # Qwen2-MoE: layer 0 dense
    for batch, seq, seed in ((1, 9, 1), (3, 26, 2)):
        ids = _ids(batch, seq, seed)
        logits, *routings = ours(ids)
        torch.testing.assert_close(logits, reference(input_ids=ids).logits, atol=ATOL, rtol=RTOL)
        expected = _hf_experts(reference, ids)
        assert len(routings) == len(expected)
        for ours_routing, hf_experts in zip(routings, expected):
            assert torch.equal(_our_experts(ours_routing, 2), hf_experts)
    prompt = [5, 17, 42, 8, 99]
    tokens = _greedy_kv(ours, prompt, STEPS)
    assert tokens == hf_greedy(reference, prompt, STEPS)
    assert len(set(tokens)) > 2


@pytest.fixture(scope="session")
def mixtral_bundle(hf_moe, tmp_path_factory):
    """The Mixtral, exported and compiled from its folder (main graph; the KV graphs are the
    Llama family's, built in test_hf_llama.py)."""
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    reference, folder = hf_moe("mixtral")
    out = tmp_path_factory.mktemp("mixtral-artifact") / "out"
    export_model(None, out, ExportOptions(from_hf=folder, generation_graphs=False))
    compile_artifact(out)
    return reference, out


@pytest.mark.parametrize("backend", ["ort", "tvm"])
def test_built_mixtral_logits_and_experts_match_transformers(mixtral_bundle, backend):
    from forgeline.runtime import load

    reference, out = mixtral_bundle
    with load(out, backend=backend) as model:
        for batch, seq, seed in ((1, 9, 3), (4, 21, 4)):
            ids = _ids(batch, seq, seed)
            got = model.run(input_ids=ids.numpy())
            with torch.no_grad():
                expected = reference(input_ids=ids).logits.numpy()
            np.testing.assert_allclose(got["logits"], expected, atol=ATOL, rtol=RTOL)
            for i, hf_experts in enumerate(_hf_experts(reference, ids)):
                assert torch.equal(_our_experts(got[f"routing.{i}"], 2), hf_experts)


def test_mixtral_gated_experts_take_the_sparse_grouped_gemm(mixtral_bundle):
    from forgeline.compile.cpu.moe_rows import compact_expert_rows
    from forgeline.compile.tvm_build import import_relax

    _, out = mixtral_bundle
    mod = import_relax(out / "model.onnx")
    rewritten = compact_expert_rows(mod).script(show_meta=False)
    # w1 | w3 (E, 32, 2 x 64) and w2 (E, 64, 32), once per layer
    assert rewritten.count("R.call_tir(cls.moe_grouped_matmul_32x128,") == 2
    assert rewritten.count("R.call_tir(cls.moe_grouped_matmul_64x32,") == 2
