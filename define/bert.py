"""BERT: token + segment + position embeddings, post-LN encoder, MLM and NSP heads.

Inputs (all int64, (B, T)): input_ids, token_type_ids, attention_mask (1 = real, 0 = pad).
Outputs: hidden_states (B, T, D), mlm_logits (B, T, V), nsp_logits (B, 2), then routing.{i}
(B, T, E) int64 per MoE layer. MoE groups are sequences; padding is never routed to an expert.
Names follow HF BERT where natural (embeddings.word_embeddings, layer.{i}.attention, pooler, ...).

RoBERTa and DistilBERT are config switches: ``pad_token_id`` >= 0 numbers positions as RoBERTa
does (from pad_token_id + 1, counting non-pad tokens), ``type_vocab_size=0`` drops the
token_type_ids input (DistilBERT), and ``next_sentence=False`` drops the pooler and the
nsp_logits output (both).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ForgelineModel, InputSpec, ModelConfig
from .activations import activation_fn
from .layers import Attention, make_ffn, padding_bias


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embeddings = nn.Embedding(config.max_positions, config.d_model)
        if config.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.d_model)
        self.LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.pad_id = config.pad_token_id

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None):
        if self.pad_id >= 0:  # RoBERTa: real tokens count from pad_id + 1, pads sit at pad_id
            real = (input_ids != self.pad_id).long()  # (B, T)
            pos = self.position_embeddings(real.cumsum(1) * real + self.pad_id)  # (B, T, D)
        else:
            pos = self.position_embeddings.weight[: input_ids.size(1)]  # (T, D), no arange (docs/tvm-notes.md)
        x = self.word_embeddings(input_ids) + pos  # (B, T, D)
        if token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class Layer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.attention = Attention(config)
        self.attention_LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = make_ffn(config, layer_index, causal=False)
        self.output_LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, token_mask: torch.Tensor):
        x = self.attention_LayerNorm(x + self.dropout(self.attention(x, bias=bias)))  # (B, T, D)
        y, routing = self.ffn(x, token_mask)  # (B, T, D), (B, T, E) or None
        return self.output_LayerNorm(x + self.dropout(y)), routing


class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(x)))) + self.bias  # (B, T, V)


class BERT(ForgelineModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layer = nn.ModuleList(Layer(config, i) for i in range(config.n_layers))
        self.mlm = MLMHead(config)
        self.mlm.decoder.weight = self.embeddings.word_embeddings.weight  # tied
        if config.next_sentence:
            self.pooler = nn.Linear(config.d_model, config.d_model)
            self.nsp = nn.Linear(config.d_model, 2)

    def input_specs(self) -> list[InputSpec]:
        c = self.config
        types = [InputSpec("token_type_ids", "int64", ("batch", "seq"), (0, c.type_vocab_size))] if c.type_vocab_size else []
        return [
            InputSpec("input_ids", "int64", ("batch", "seq"), (0, c.vocab_size)),
            *types,
            InputSpec("attention_mask", "int64", ("batch", "seq"), (0, 2)),
        ]

    def base_output_names(self) -> list[str]:
        return ["hidden_states", "mlm_logits"] + (["nsp_logits"] if self.config.next_sentence else [])

    def dim_limits(self) -> dict[str, int | None]:
        """RoBERTa's positions start at pad_token_id + 1, so its table holds that many fewer tokens."""
        start = self.config.pad_token_id + 1 if self.config.pad_token_id >= 0 else 0
        return {"batch": None, "seq": self.config.max_positions - start}

    def example_inputs(self, dims: dict[str, int], generator: torch.Generator):
        """Random ids; row 0 unpadded, other rows with trailing padding of random length (>= 1 real token)."""
        *inputs, _ = super().example_inputs(dims, generator)
        B, T = inputs[0].shape
        attention_mask = torch.ones(B, T, dtype=torch.int64)
        for b in range(1, B):
            real = int(torch.randint(max(1, T // 2), T + 1, (1,), generator=generator))
            attention_mask[b, real:] = 0
        return (*inputs, attention_mask)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, attention_mask: torch.Tensor):
        bias = padding_bias(attention_mask)  # (B, 1, 1, T)
        token_mask = attention_mask.float()  # (B, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        routings = []
        for layer in self.layer:
            x, routing = layer(x, bias, token_mask)
            if routing is not None:
                routings.append(routing)
        if not self.config.next_sentence:
            return (x, self.mlm(x), *routings)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, D) the [CLS] token
        return (x, self.mlm(x), self.nsp(pooled), *routings)


class BERTWithoutTokenTypes(BERT):
    """BERT whose inputs are input_ids and attention_mask only (DistilBERT: type_vocab_size=0)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return super().forward(input_ids, None, attention_mask)
