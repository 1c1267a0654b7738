"""Families, presets, configs, example inputs, causality, padding, checkpoints."""

import json
import subprocess
import sys

import pytest
import torch

from forgeline.define import (ForgelineModel, InputSpec, ModelConfig, build_model, get_config, list_models,
                              load_checkpoint, save_checkpoint)
from forgeline.runtime.errors import ArtifactError, ConfigError, UnknownModelError

NAMES = [m.name for m in list_models()]
EXPECTED_OUTPUTS = {"transformer": ["logits"], "bert": ["hidden_states", "mlm_logits", "nsp_logits"], "gpt": ["logits"]}


def run(model, inputs):
    with torch.no_grad():
        return dict(zip(model.output_names(), model(*inputs)))


def dims_for(model, batch, seq):
    return {d: batch if d == "batch" else seq for d in model.dim_limits()}


def test_required_names_exist():
    assert {"transformer", "bert", "gpt", "gpt-moe", "bert-moe", "gpt-moe-tc"} <= set(NAMES)
    for info in list_models():
        assert info.presets == ("tiny", "small", "base") and info.description


@pytest.mark.parametrize("name", NAMES)
def test_tiny_shapes_and_dtypes(name):
    model = build_model(get_config(name, "tiny"))
    assert isinstance(model, ForgelineModel) and not model.training
    c = model.config
    B, T = 3, 7
    inputs = model.example_inputs(dims_for(model, B, T), torch.Generator().manual_seed(0))
    specs = model.input_specs()
    assert all(isinstance(s, InputSpec) for s in specs) and len(inputs) == len(specs)
    for spec, x in zip(specs, inputs):
        assert str(x.dtype) == f"torch.{spec.dtype}" and x.dim() == len(spec.dims)
        assert spec.value_range[0] <= int(x.min()) and int(x.max()) < spec.value_range[1]
    out = run(model, inputs)
    names = model.output_names()
    n_moe = 0 if c.router == "none" else c.n_layers + (c.n_decoder_layers if c.family == "transformer" else 0)
    assert names == EXPECTED_OUTPUTS[c.family] + [f"routing.{i}" for i in range(n_moe)]
    V, D, E = c.vocab_size, c.d_model, c.n_experts
    want = {"logits": (B, T, V), "hidden_states": (B, T, D), "mlm_logits": (B, T, V), "nsp_logits": (B, 2)}
    for key, value in out.items():
        if key.startswith("routing."):
            assert value.shape == (B, T, E) and value.dtype == torch.int64
            assert set(value.unique().tolist()) <= {0, 1}
        else:
            assert value.shape == want[key] and value.dtype == torch.float32 and torch.isfinite(value).all()


def test_presets_sizes():
    base = get_config("bert", "base")
    assert (base.d_model, base.n_layers, base.n_heads, base.d_ff, base.vocab_size, base.max_positions) == \
        (768, 12, 12, 3072, 30522, 512)
    assert get_config("gpt", "base").vocab_size == 50257 and get_config("gpt", "base").max_positions == 1024
    t = get_config("transformer", "base")
    assert (t.d_model, t.n_layers, t.n_decoder_layers, t.n_heads, t.d_ff) == (512, 6, 6, 8, 2048)
    assert get_config("gpt-moe", "small").n_experts == 8 and get_config("gpt-moe", "small").moe_every == 2
    assert get_config("gpt-moe-tc").router == "token_choice" and get_config("gpt-moe-tc").router_top_k == 2
    assert get_config("gpt", "tiny", d_model=64).d_model == 64


def test_config_round_trips_through_json():
    config = get_config("gpt-moe-tc", "small")
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.head_dim == 64


@pytest.mark.parametrize("overrides, numbers", [
    (dict(d_model=250, n_heads=4), ["d_model=250", "n_heads=4"]),
    (dict(router_top_k=5), ["router_top_k=5", "n_experts=4"]),
    (dict(n_layers=0), ["n_layers=0"]),
    (dict(capacity_factor=-1.0), ["capacity_factor=-1.0"]),
])
def test_config_errors_name_the_numbers(overrides, numbers):
    with pytest.raises(ConfigError) as err:
        get_config("gpt-moe-tc", "tiny", **overrides)
    assert all(n in str(err.value) for n in numbers), str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_names():
    with pytest.raises(UnknownModelError, match="gpt-moe"):
        get_config("gpt5")
    with pytest.raises(UnknownModelError, match="tiny, small, base"):
        get_config("gpt", "huge")
    with pytest.raises(ConfigError, match="d_modle"):
        get_config("gpt", d_modle=3)


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(get_config("gpt"), seed=1)
    assert torch.equal(torch.rand(1), before)
    b, c = build_model(get_config("gpt"), seed=1), build_model(get_config("gpt"), seed=2)
    assert torch.equal(a.wte.weight, b.wte.weight) and not torch.equal(a.wte.weight, c.wte.weight)


def test_bert_example_inputs_pad_some_rows_never_all():
    model = build_model(get_config("bert-moe"))
    for seed in range(5):
        _, _, mask = model.example_inputs({"batch": 4, "seq": 9}, torch.Generator().manual_seed(seed))
        assert (mask.sum(1) >= 1).all() and (mask == 0).any()
        assert (mask[:, 1:] <= mask[:, :-1]).all()  # padding is trailing


@pytest.mark.parametrize("name", ["gpt", "gpt-moe", "gpt-moe-tc", "gpt-moe-switch", "transformer", "transformer-moe"])
def test_decoder_is_causal(name):
    model = build_model(get_config(name, "tiny"))
    B, T, t = 3, 12, 5
    inputs = list(model.example_inputs(dims_for(model, B, T), torch.Generator().manual_seed(0)))
    changed = [x.clone() for x in inputs]
    target = -1  # tgt_ids for transformer, input_ids for gpt
    changed[target][:, t + 1:] = torch.randint(0, model.config.vocab_size, (B, T - t - 1),
                                               generator=torch.Generator().manual_seed(9))
    assert not torch.equal(changed[target], inputs[target])
    a, b = run(model, inputs), run(model, changed)
    n_enc = model.config.n_layers if name == "transformer-moe" else 0
    for key in a:
        if key.startswith("routing.") and int(key.split(".")[1]) < n_enc:
            assert torch.equal(a[key], b[key])  # encoder routing: source unchanged
            continue
        torch.testing.assert_close(a[key][:, :t + 1], b[key][:, :t + 1], atol=1e-6, rtol=0, msg=key)
    assert not torch.allclose(a["logits"][:, t + 1:], b["logits"][:, t + 1:])


def test_bert_moe_padding_never_routed_and_padding_invariant():
    model = build_model(get_config("bert-moe"))
    ids, types, mask = model.example_inputs({"batch": 4, "seq": 10}, torch.Generator().manual_seed(3))
    out = run(model, (ids, types, mask))
    routings = [v for k, v in out.items() if k.startswith("routing.")]
    assert len(routings) == 2
    for r in routings:
        assert r[mask == 0].sum() == 0 and r[mask == 1].sum() > 0
    # More trailing padding must not change anything about the real tokens (k counts real tokens).
    pad = torch.zeros(4, 5, dtype=torch.int64)
    longer = run(model, (torch.cat([ids, pad + 7], 1), torch.cat([types, pad], 1), torch.cat([mask, pad], 1)))
    real = mask.bool()
    for key in out:
        if key == "nsp_logits":
            torch.testing.assert_close(out[key], longer[key], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(out[key][real], longer[key][:, :10][real], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["gpt", "bert-moe", "transformer-moe", "gpt-moe-tc"])
def test_checkpoint_round_trip(name, tmp_path):
    model = build_model(get_config(name), seed=4)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    inputs = model.example_inputs(dims_for(model, 2, 6), torch.Generator().manual_seed(0))
    for a, b in zip(run(model, inputs).values(), run(loaded, inputs).values()):
        assert torch.equal(a, b)
    head = loaded.lm_head if hasattr(loaded, "lm_head") else loaded.mlm.decoder
    assert head.weight.data_ptr() == next(p for n, p in loaded.named_parameters() if "embed" in n or "wte" in n).data_ptr()


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError):
        load_checkpoint(bad)


def test_routing_stats_module_needs_no_torch(tmp_path):
    code = "import sys, forgeline.define.routing_stats; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
