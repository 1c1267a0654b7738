"""BERT: token + segment + position embeddings, post-LN encoder, MLM and NSP heads.

Inputs (all int64, (B, T)): input_ids, token_type_ids, attention_mask (1 = real, 0 = pad).
Outputs: hidden_states (B, T, D), mlm_logits (B, T, V), nsp_logits (B, 2), then routing.{i}
(B, T, E) int64 per MoE layer. MoE groups are sequences; padding is never routed to an expert.
Names follow HF BERT where natural (embeddings.word_embeddings, layer.{i}.attention, pooler, ...).
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
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.d_model)
        self.LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor):
        pos = self.position_embeddings.weight[: input_ids.size(1)]  # (T, D), no arange (docs/tvm-notes.md)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + pos  # (B, T, D)
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
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.mlm = MLMHead(config)
        self.mlm.decoder.weight = self.embeddings.word_embeddings.weight  # tied
        self.nsp = nn.Linear(config.d_model, 2)

    def input_specs(self) -> list[InputSpec]:
        c = self.config
        return [
            InputSpec("input_ids", "int64", ("batch", "seq"), (0, c.vocab_size)),
            InputSpec("token_type_ids", "int64", ("batch", "seq"), (0, c.type_vocab_size)),
            InputSpec("attention_mask", "int64", ("batch", "seq"), (0, 2)),
        ]

    def base_output_names(self) -> list[str]:
        return ["hidden_states", "mlm_logits", "nsp_logits"]

    def example_inputs(self, dims: dict[str, int], generator: torch.Generator):
        """Random ids; row 0 unpadded, other rows with trailing padding of random length (>= 1 real token)."""
        input_ids, token_type_ids, _ = super().example_inputs(dims, generator)
        B, T = input_ids.shape
        attention_mask = torch.ones(B, T, dtype=torch.int64)
        for b in range(1, B):
            real = int(torch.randint(max(1, T // 2), T + 1, (1,), generator=generator))
            attention_mask[b, real:] = 0
        return input_ids, token_type_ids, attention_mask

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        bias = padding_bias(attention_mask)  # (B, 1, 1, T)
        token_mask = attention_mask.float()  # (B, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        routings = []
        for layer in self.layer:
            x, routing = layer(x, bias, token_mask)
            if routing is not None:
                routings.append(routing)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, D) the [CLS] token
        return (x, self.mlm(x), self.nsp(pooled), *routings)
