"""How each Hugging Face architecture's tensors map onto a forgeline family: data, not code.

Each architecture has one declarative ``Layout``: renames, tensors to transpose (GPT-2's Conv1D
stores (in, out)), fused tensors to split (GPT-2's c_attn -> query, key, value), tied copies,
buffers to ignore, and parts a checkpoint may lack (a BertModel has no MLM or NSP head). A rule
whose forgeline tensor the configured model does not have (a bias the config switches off, an
LM head tied to the embedding) is left out, so such a tensor in a checkpoint is "unexpected".

Templates use ``{i}`` for a layer index and ``{p}`` for ``weight``/``bias``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How one Hugging Face architecture's state dict maps onto one forgeline family."""

    family: str  # the forgeline family it imports into
    strip_prefixes: tuple[str, ...]  # base-model prefixes of HF head classes ("bert.", "transformer.")
    renames: tuple[tuple[str, str], ...]  # (HF template, our template)
    transpose: tuple[str, ...] = ()  # HF templates stored (in, out), as Conv1D: transposed to Linear's (out, in)
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()  # HF template -> our templates, equal chunks of dim 0
    splits_per_head: bool = False  # the fused rows interleave per head ([q_h, k_h, v_h] for each h: GPT-NeoX)
    tied: tuple[tuple[str, str], ...] = ()  # (HF key, our name): a copy of a tied tensor, checked equal when present
    ignore: tuple[str, ...] = ()  # HF templates of buffers that hold no weights (masks, position ids)
    optional: tuple[str, ...] = ()  # our name prefixes a checkpoint may lack; they keep the seeded init
    legacy_suffixes: tuple[tuple[str, str], ...] = ()  # old TF-converted names (".gamma" -> ".weight")
    # Per-expert Linear weights ({e} = expert) -> one stacked (E, in, out) tensor of ours: each
    # transposed, those of one rule side by side along out (Mixtral's w1 | w3), stacked over e.
    experts: tuple[tuple[tuple[str, ...], str], ...] = ()


PARAMS = ("weight", "bias")

BERT_LAYOUT = Layout(
    family="bert",
    strip_prefixes=("bert.",),
    renames=(
        ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
        ("embeddings.LayerNorm.{p}", "embeddings.LayerNorm.{p}"),
        ("encoder.layer.{i}.attention.self.query.{p}", "layer.{i}.attention.query.{p}"),
        ("encoder.layer.{i}.attention.self.key.{p}", "layer.{i}.attention.key.{p}"),
        ("encoder.layer.{i}.attention.self.value.{p}", "layer.{i}.attention.value.{p}"),
        ("encoder.layer.{i}.attention.output.dense.{p}", "layer.{i}.attention.output.{p}"),
        ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "layer.{i}.attention_LayerNorm.{p}"),
        ("encoder.layer.{i}.intermediate.dense.{p}", "layer.{i}.ffn.fc1.{p}"),
        ("encoder.layer.{i}.output.dense.{p}", "layer.{i}.ffn.fc2.{p}"),
        ("encoder.layer.{i}.output.LayerNorm.{p}", "layer.{i}.output_LayerNorm.{p}"),
        ("pooler.dense.{p}", "pooler.{p}"),
        ("cls.predictions.transform.dense.{p}", "mlm.dense.{p}"),
        ("cls.predictions.transform.LayerNorm.{p}", "mlm.LayerNorm.{p}"),
        ("cls.predictions.bias", "mlm.bias"),
        ("cls.seq_relationship.{p}", "nsp.{p}"),
    ),
    tied=(("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
          ("cls.predictions.decoder.bias", "mlm.bias")),
    ignore=("embeddings.position_ids",),
    optional=("pooler.", "mlm.", "nsp."),  # BertModel has no heads; BertForMaskedLM has no pooler/NSP
    legacy_suffixes=((".gamma", ".weight"), (".beta", ".bias")),
)

GPT2_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=("transformer.",),
    renames=(
        ("wte.weight", "wte.weight"),
        ("wpe.weight", "wpe.weight"),
        ("h.{i}.ln_1.{p}", "h.{i}.ln_1.{p}"),
        ("h.{i}.attn.c_proj.{p}", "h.{i}.attn.output.{p}"),
        ("h.{i}.ln_2.{p}", "h.{i}.ln_2.{p}"),
        ("h.{i}.mlp.c_fc.{p}", "h.{i}.mlp.fc1.{p}"),
        ("h.{i}.mlp.c_proj.{p}", "h.{i}.mlp.fc2.{p}"),
        ("ln_f.{p}", "ln_f.{p}"),
    ),
    transpose=("h.{i}.attn.c_attn.weight", "h.{i}.attn.c_proj.weight", "h.{i}.mlp.c_fc.weight",
               "h.{i}.mlp.c_proj.weight"),
    splits=(("h.{i}.attn.c_attn.{p}", ("h.{i}.attn.query.{p}", "h.{i}.attn.key.{p}", "h.{i}.attn.value.{p}")),),
    tied=(("lm_head.weight", "wte.weight"),),
    ignore=("h.{i}.attn.bias", "h.{i}.attn.masked_bias"),  # causal-mask buffers of older checkpoints
)

_BERT_ENCODER = tuple(r for r in BERT_LAYOUT.renames if not r[0].startswith(("cls.", "pooler.")))

ROBERTA_LAYOUT = Layout(
    family="bert",
    strip_prefixes=("roberta.",),
    renames=(
        *_BERT_ENCODER,
        ("lm_head.dense.{p}", "mlm.dense.{p}"),
        ("lm_head.layer_norm.{p}", "mlm.LayerNorm.{p}"),
        ("lm_head.bias", "mlm.bias"),
    ),
    tied=(("lm_head.decoder.weight", "embeddings.word_embeddings.weight"), ("lm_head.decoder.bias", "mlm.bias")),
    # RobertaModel's pooler feeds only task heads forgeline does not build (RoBERTa has no NSP)
    ignore=("embeddings.position_ids", "embeddings.token_type_ids", "pooler.dense.{p}"),
    optional=("mlm.",),  # RobertaModel has no MLM head
)

DISTILBERT_LAYOUT = Layout(
    family="bert",
    strip_prefixes=("distilbert.",),
    renames=(
        ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.LayerNorm.{p}", "embeddings.LayerNorm.{p}"),
        ("transformer.layer.{i}.attention.q_lin.{p}", "layer.{i}.attention.query.{p}"),
        ("transformer.layer.{i}.attention.k_lin.{p}", "layer.{i}.attention.key.{p}"),
        ("transformer.layer.{i}.attention.v_lin.{p}", "layer.{i}.attention.value.{p}"),
        ("transformer.layer.{i}.attention.out_lin.{p}", "layer.{i}.attention.output.{p}"),
        ("transformer.layer.{i}.sa_layer_norm.{p}", "layer.{i}.attention_LayerNorm.{p}"),
        ("transformer.layer.{i}.ffn.lin1.{p}", "layer.{i}.ffn.fc1.{p}"),
        ("transformer.layer.{i}.ffn.lin2.{p}", "layer.{i}.ffn.fc2.{p}"),
        ("transformer.layer.{i}.output_layer_norm.{p}", "layer.{i}.output_LayerNorm.{p}"),
        ("vocab_transform.{p}", "mlm.dense.{p}"),
        ("vocab_layer_norm.{p}", "mlm.LayerNorm.{p}"),
        ("vocab_projector.bias", "mlm.bias"),
    ),
    tied=(("vocab_projector.weight", "embeddings.word_embeddings.weight"),),
    ignore=("embeddings.position_ids",),
    optional=("mlm.",),  # DistilBertModel has no MLM head
)

LLAMA_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=("model.",),
    renames=(
        ("embed_tokens.weight", "wte.weight"),
        ("layers.{i}.input_layernorm.weight", "h.{i}.ln_1.weight"),
        ("layers.{i}.self_attn.q_proj.{p}", "h.{i}.attn.query.{p}"),
        ("layers.{i}.self_attn.k_proj.{p}", "h.{i}.attn.key.{p}"),
        ("layers.{i}.self_attn.v_proj.{p}", "h.{i}.attn.value.{p}"),
        ("layers.{i}.self_attn.o_proj.{p}", "h.{i}.attn.output.{p}"),
        ("layers.{i}.post_attention_layernorm.weight", "h.{i}.ln_2.weight"),
        ("layers.{i}.mlp.gate_proj.{p}", "h.{i}.mlp.fc1.{p}"),
        ("layers.{i}.mlp.up_proj.{p}", "h.{i}.mlp.fc3.{p}"),
        ("layers.{i}.mlp.down_proj.{p}", "h.{i}.mlp.fc2.{p}"),
        ("norm.weight", "ln_f.weight"),
        ("lm_head.weight", "lm_head.weight"),  # untied checkpoints; a tied one reads it below
    ),
    tied=(("lm_head.weight", "wte.weight"),),
    ignore=("layers.{i}.self_attn.rotary_emb.inv_freq", "rotary_emb.inv_freq"),  # older checkpoints' buffers
)

_LLAMA_ATTENTION = tuple(r for r in LLAMA_LAYOUT.renames if ".mlp." not in r[0])

MIXTRAL_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=LLAMA_LAYOUT.strip_prefixes,
    renames=(*_LLAMA_ATTENTION, ("layers.{i}.block_sparse_moe.gate.weight", "h.{i}.mlp.gate.weight")),
    experts=((("layers.{i}.block_sparse_moe.experts.{e}.w1.weight", "layers.{i}.block_sparse_moe.experts.{e}.w3.weight"),
              "h.{i}.mlp.experts.w1"),
             (("layers.{i}.block_sparse_moe.experts.{e}.w2.weight",), "h.{i}.mlp.experts.w2")),
    tied=LLAMA_LAYOUT.tied,
    ignore=LLAMA_LAYOUT.ignore,
)

QWEN2_MOE_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=LLAMA_LAYOUT.strip_prefixes,
    renames=(
        *LLAMA_LAYOUT.renames,  # the dense layers between sparse ones (decoder_sparse_step > 1)
        ("layers.{i}.mlp.gate.weight", "h.{i}.mlp.gate.weight"),
        ("layers.{i}.mlp.shared_expert.gate_proj.weight", "h.{i}.mlp.shared_expert.fc1.weight"),
        ("layers.{i}.mlp.shared_expert.up_proj.weight", "h.{i}.mlp.shared_expert.fc3.weight"),
        ("layers.{i}.mlp.shared_expert.down_proj.weight", "h.{i}.mlp.shared_expert.fc2.weight"),
        ("layers.{i}.mlp.shared_expert_gate.weight", "h.{i}.mlp.shared_expert_gate.weight"),
    ),
    experts=((("layers.{i}.mlp.experts.{e}.gate_proj.weight", "layers.{i}.mlp.experts.{e}.up_proj.weight"),
              "h.{i}.mlp.experts.w1"),
             (("layers.{i}.mlp.experts.{e}.down_proj.weight",), "h.{i}.mlp.experts.w2")),
    tied=LLAMA_LAYOUT.tied,
    ignore=LLAMA_LAYOUT.ignore,
)

GPT_NEOX_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=("gpt_neox.",),
    renames=(
        ("embed_in.weight", "wte.weight"),
        ("layers.{i}.input_layernorm.{p}", "h.{i}.ln_1.{p}"),
        ("layers.{i}.attention.dense.{p}", "h.{i}.attn.output.{p}"),
        ("layers.{i}.post_attention_layernorm.{p}", "h.{i}.ln_2.{p}"),
        ("layers.{i}.mlp.dense_h_to_4h.{p}", "h.{i}.mlp.fc1.{p}"),
        ("layers.{i}.mlp.dense_4h_to_h.{p}", "h.{i}.mlp.fc2.{p}"),
        ("final_layer_norm.{p}", "ln_f.{p}"),
        ("lm_head.weight", "lm_head.weight"),
    ),
    splits=(("layers.{i}.attention.query_key_value.{p}", ("h.{i}.attn.query.{p}", "h.{i}.attn.key.{p}", "h.{i}.attn.value.{p}")),),
    splits_per_head=True,
    tied=(("lm_head.weight", "wte.weight"),),
    legacy_suffixes=(("embed_out.weight", "lm_head.weight"),),  # the head's name before transformers 5
    ignore=("layers.{i}.attention.bias", "layers.{i}.attention.masked_bias", "layers.{i}.attention.rotary_emb.inv_freq"),
)

_BART_ATTENTION = (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "output"))

BART_LAYOUT = Layout(
    family="transformer",
    strip_prefixes=("model.",),
    renames=(
        ("shared.weight", "embed.weight"),
        ("encoder.embed_positions.weight", "pos.weight"),
        ("decoder.embed_positions.weight", "decoder_pos.weight"),
        ("encoder.layernorm_embedding.{p}", "encoder_embed_ln.{p}"),
        ("decoder.layernorm_embedding.{p}", "decoder_embed_ln.{p}"),
        *((f"encoder.layers.{{i}}.self_attn.{hf}.{{p}}", f"encoder.{{i}}.self_attn.{ours}.{{p}}") for hf, ours in _BART_ATTENTION),
        ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.{i}.ln_1.{p}"),
        ("encoder.layers.{i}.fc1.{p}", "encoder.{i}.ffn.fc1.{p}"),
        ("encoder.layers.{i}.fc2.{p}", "encoder.{i}.ffn.fc2.{p}"),
        ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.{i}.ln_2.{p}"),
        *((f"decoder.layers.{{i}}.self_attn.{hf}.{{p}}", f"decoder.{{i}}.self_attn.{ours}.{{p}}") for hf, ours in _BART_ATTENTION),
        ("decoder.layers.{i}.self_attn_layer_norm.{p}", "decoder.{i}.ln_1.{p}"),
        *((f"decoder.layers.{{i}}.encoder_attn.{hf}.{{p}}", f"decoder.{{i}}.cross_attn.{ours}.{{p}}") for hf, ours in _BART_ATTENTION),
        ("decoder.layers.{i}.encoder_attn_layer_norm.{p}", "decoder.{i}.ln_2.{p}"),
        ("decoder.layers.{i}.fc1.{p}", "decoder.{i}.ffn.fc1.{p}"),
        ("decoder.layers.{i}.fc2.{p}", "decoder.{i}.ffn.fc2.{p}"),
        ("decoder.layers.{i}.final_layer_norm.{p}", "decoder.{i}.ln_3.{p}"),
        ("final_logits_bias", "logits_bias"),
    ),
    # one embedding serves both sides and the LM head; older checkpoints save the copies
    tied=(("lm_head.weight", "embed.weight"), ("encoder.embed_tokens.weight", "embed.weight"),
          ("decoder.embed_tokens.weight", "embed.weight")),
)

# model_type -> layout. Mistral and Qwen2 are Llama's tensors under Llama's names; their
# differences (sliding window, QKV bias) are config switches (hf_configs.py).
LAYOUTS = {"bert": BERT_LAYOUT, "roberta": ROBERTA_LAYOUT, "distilbert": DISTILBERT_LAYOUT, "gpt2": GPT2_LAYOUT,
           "llama": LLAMA_LAYOUT, "mistral": LLAMA_LAYOUT, "qwen2": LLAMA_LAYOUT, "gpt_neox": GPT_NEOX_LAYOUT, "mixtral": MIXTRAL_LAYOUT,
           "qwen2_moe": QWEN2_MOE_LAYOUT, "bart": BART_LAYOUT}
