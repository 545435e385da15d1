"""Decoder-only transformers (Llama 3, Qwen 2/2.5, Qwen 3) as pure functions.

  config = models.PRESETS["tiny"]            # or: config, params = models.hf.load(dir)
  params = models.init_params(config, key, mesh=None)
  logits_NxQxV, cache = models.apply(params, tokens_NxQ, positions_NxQ,
                                     attention_mask_NxS, cache=None, config=config)

See transformer.py for the params tree and mask semantics, cache.py for the KV
cache layout, hf.py for checkpoints, and golfjax/sharding.py for the rules.
"""

from golfjax.models import hf
from golfjax.models.cache import CACHE_LOGICAL_AXES, KVCache, cache_shardings, init_cache
from golfjax.models.config import PRESETS, ModelConfig, RopeScaling, get_preset
from golfjax.models.transformer import (Params, abstract_params, apply, hidden,
                                        init_params, logical_axes, param_shardings,
                                        unembed)

__all__ = [
    "CACHE_LOGICAL_AXES", "KVCache", "ModelConfig", "PRESETS", "Params",
    "RopeScaling", "abstract_params", "apply", "cache_shardings", "get_preset",
    "hf", "hidden", "init_cache", "init_params", "logical_axes",
    "param_shardings", "unembed",
]
