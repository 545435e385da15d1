"""`SamplingConfig`: how the sampler samples (golfjax/sampling.py runs it).

Its own module, below the sampler's: golfjax/sampling.py, golfjax/decode.py
and golfjax/draw.py all read it, and it reads none of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _buckets(name: str, value: Sequence[int]) -> tuple[int, ...]:
    buckets = tuple(value)
    if not buckets or not all(_is_int(b) and b > 0 for b in buckets):
        raise ValueError(
            f"SamplingConfig.{name} must be a non-empty sequence of positive"
            f" ints, got {value!r}"
        )
    if list(buckets) != sorted(set(buckets)):
        raise ValueError(
            f"SamplingConfig.{name} must be strictly increasing, got {value!r}"
        )
    return tuple(int(b) for b in buckets)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Hashable, so it is a static part of the compiled programs.

    Attributes:
      temperature: divides the logits; 0 means greedy (argmax).
      top_p: nucleus sampling mass in (0, 1]; 1 disables it.
      top_k: keep only the k most probable tokens; 0 disables it.
      max_new_tokens: T, the most tokens generated per row.
      stop_ids: tokens that end a row (e.g. `Tokenizer.stop_ids`); the stop token
        is kept as the row's last response token.
      group_size: G samples per prompt, all sharing the prompt's prefill.
      prompt_buckets: allowed padded prompt lengths P, increasing.
      batch_buckets: allowed padded prompt counts B, increasing.
      pad_id: token id written into padding (prompt left-padding and after a
        stop); it is always masked out.
      decode_loops: the most decode loops (golfjax/decode.py's
        `decode_segments`), each of at least `MIN_LOOP_STEPS` steps: more
        loops read less of the KV cache per step, and each compiles its own
        copy of the model's forward pass (of every layer with
        `ModelConfig.decode_layers` unrolled, of one layer body with scan). 1 reads all P + T slots on every step and compiles
        fastest.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop_ids: tuple[int, ...] = ()
    group_size: int = 1
    prompt_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    pad_id: int = 0
    decode_loops: int = 4

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (
            math.isfinite(t) and t >= 0
        ):
            raise ValueError(
                f"SamplingConfig.temperature must be a finite float >= 0, got {t!r}"
            )
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(
                f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}"
            )
        for name, low in (("top_k", 0), ("max_new_tokens", 1), ("group_size", 1),
                          ("pad_id", 0), ("decode_loops", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(
                    f"SamplingConfig.{name} must be an int >= {low}, got {value!r}"
                )
        stop_ids = tuple(self.stop_ids)
        if not all(_is_int(i) and i >= 0 for i in stop_ids):
            raise ValueError(
                f"SamplingConfig.stop_ids must be ints >= 0, got {self.stop_ids!r}"
            )
        # Frozen: normalise through object.__setattr__ so that equal configs hash
        # equal (and share compiled programs) whether built from lists or tuples.
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in stop_ids))
        for name in ("prompt_buckets", "batch_buckets"):
            object.__setattr__(self, name, _buckets(name, getattr(self, name)))

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)
