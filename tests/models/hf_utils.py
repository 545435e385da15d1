"""Tiny random transformers checkpoints for parity tests (PyTorch CPU, float32)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 128
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# One tiny config per family, each exercising that family's features; all use
# GQA (4 query heads over 2 kv heads).
FAMILIES = {
    "llama3": ("LlamaConfig", dict(rope_scaling=LLAMA3_SCALING,
                                   rope_theta=500000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(tie_word_embeddings=False)),
    # Layer 0 a mixture of 8 experts (2 per token), layer 1 dense.
    "qwen3_moe": ("Qwen3MoeConfig", dict(
        tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[1])),
}


def make_hf_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny model whose weights are large enough to make errors visible."""
    config_name, extra = FAMILIES[family]
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=256)
    kwargs.update(extra)
    kwargs.update(overrides)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        config, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1 if p.ndim > 1 else 0.5)
    return model


def left_padded_batch(batch: int = 3, length: int = 24, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens_NxS, positions_NxS, mask_NxS; row b has 0, 5, 10... pad slots."""
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, :min(5 * b, length - 1)] = False
    tokens = rng.randint(1, VOCAB, (batch, length))
    tokens[~mask] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, positions, mask


def torch_logits(model: torch.nn.Module, tokens: np.ndarray,
                 positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens),
                     attention_mask=torch.tensor(mask.astype(np.int64)),
                     position_ids=torch.tensor(positions)).logits.float().numpy()


def greedy(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> np.ndarray:
    """transformers' greedy continuation of left-padded prompts, `new_tokens` each."""
    length = max(map(len, prompts))
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros((len(prompts), length), np.int64)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = p
        mask[row, length - len(p):] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    return out[:, length:].numpy()
