"""A transformer that is a bigram model in closed form, for hand-computed tests.

Every layer's weights are zero, so no layer adds anything to the residual
stream; the embedding is one-hot (V = D) and the final norm's scale is 1, so
the hidden state where token v stands is `e_v / sqrt(1/D + eps)`, and its
logits are `lm_head[v] / sqrt(1/D + eps)`: a function of that token alone,
whatever the other positions, RoPE, the attention or a KV cache hold.
"""

from __future__ import annotations

import jax
import numpy as np

from golfjax.models import config as config_lib
from golfjax.models import transformer

V = 16
CONFIG = config_lib.ModelConfig(vocab_size=V, embed_dim=V, num_layers=2, num_heads=2,
                                num_kv_heads=1, head_dim=8, mlp_dim=32)


def params(lm_head_VxV: np.ndarray) -> dict:
    """The params tree of `CONFIG` with `lm_head_VxV` as the LM head (D = V)."""
    tree = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), transformer.abstract_params(CONFIG))
    tree["embed"]["embedding"] = np.eye(V, dtype=np.float32)
    tree["final_norm"]["scale"] = np.ones(V, np.float32)
    tree["lm_head"] = np.asarray(lm_head_VxV, np.float32)
    return tree


def logits(lm_head_VxV: np.ndarray, token: int) -> np.ndarray:
    """float64 logits of the next token where `token` stands."""
    return np.asarray(lm_head_VxV, np.float64)[token] / np.sqrt(1.0 / V + CONFIG.rms_norm_eps)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
