"""A Hugging Face checkpoint folder with Qwen2-0.5B's shapes and seeded random weights.

``write_qwen2_folder`` writes ``config.json`` (Qwen2-0.5B's) and
``model.safetensors`` in bf16, as the published checkpoint is, one tensor at a time: the file is
built on disk while memory holds a single tensor, so making a 0.5B-parameter folder needs about
0.6 GB, not the 2 GB of its fp32 weights. Norm scales are near 1 and every other tensor is
N(0, 0.02), like a fresh init; ``forgeline build --from-hf FOLDER`` imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

# Qwen2-0.5B's config.json, less the token ids (the importer cuts its 131072 positions to 2048).
QWEN2_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 24, "initializer_range": 0.02, "torch_dtype": "bfloat16",
}


def qwen2_tensors(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a tied Qwen2 checkpoint, in the published file's order."""
    d, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    out = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (d,)),
                (p + "self_attn.q_proj.weight", (d, d)), (p + "self_attn.q_proj.bias", (d,)),
                (p + "self_attn.k_proj.weight", (kv, d)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (d, d)), (p + "post_attention_layernorm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (ffn, d)), (p + "mlp.up_proj.weight", (ffn, d)),
                (p + "mlp.down_proj.weight", (d, ffn))]
    return out + [("model.norm.weight", (d,))]


def _tensor(name: str, shape: tuple[int, ...], generator):
    """One seeded bf16 tensor: norm scales 1 + N(0, 0.1), the rest N(0, 0.02)."""
    import torch

    noise = torch.randn(shape, generator=generator)
    values = 1 + 0.1 * noise if name.endswith("norm.weight") else 0.02 * noise
    return values.to(torch.bfloat16)


def write_qwen2_folder(folder: Path, config: dict = QWEN2_05B, seed: int = 0) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (bf16) into ``folder``; returns it."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = qwen2_tensors(config)
    header: dict = {"__metadata__": {"format": "pt"}}
    cursor = 0
    for name, shape in tensors:
        size = 2 * int(torch.Size(shape).numel())  # bf16
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [cursor, cursor + size]}
        cursor += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    generator = torch.Generator().manual_seed(seed)
    with open(folder / "model.safetensors", "wb") as out:
        out.write(len(text).to_bytes(8, "little"))
        out.write(text)
        for name, shape in tensors:  # one tensor in memory at a time
            out.write(_tensor(name, shape, generator).view(torch.int16).numpy().tobytes())
    return folder


__all__ = ["QWEN2_05B", "qwen2_tensors", "write_qwen2_folder"]
