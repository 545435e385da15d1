"""Keeping model-written text from injecting control tokens into a prompt.

GOLF pastes the group's attempts and their critiques into a new prompt (and a
model judge pastes a response into its own). `Tokenizer.encode` turns the TEXT
of a special token (e.g. "<|im_end|>") into its control id, so a response that
spells out a turn marker would, once pasted, end the user turn early and start
a forged one. The decoded text can contain such strings even though the sampler
never emits the control id itself: a model can spell them out piece by piece.

Approach: every special token string of the tokenizer (ids that decode to ""
with `skip_special_tokens=True` but not without it: bos/eos/pad, turn markers,
control pieces) is deleted from pasted text, repeatedly, until none is left
(deleting one occurrence can join two halves into a new one). Ordinary added
tokens (Qwen 3's `<think>`) are plain text and are kept. Markers that a chat
template writes as ordinary text (the plain "user: " template) cannot be told
apart from content and are not touched.
"""

from __future__ import annotations

import functools
import re

from golfjax.tokenizer import Tokenizer


@functools.lru_cache(maxsize=16)
def special_token_strings(tokenizer: Tokenizer) -> tuple[str, ...]:
    """The special token strings of `tokenizer`, longest first.

    One pass over the vocabulary, cached per tokenizer object (a 150k-id
    vocabulary takes a fraction of a second).
    """
    found = {t for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) if t}
    for i in range(tokenizer.vocab_size):
        shown = tokenizer.decode([i], skip_special_tokens=False)
        if shown and not tokenizer.decode([i], skip_special_tokens=True):
            found.add(shown)
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


@functools.lru_cache(maxsize=16)
def _pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    if not specials:
        return None
    return re.compile("|".join(map(re.escape, specials)))


def strip_special_tokens(text: str, tokenizer: Tokenizer) -> str:
    """`text` with every special token string removed (see the module docstring)."""
    pattern = _pattern(special_token_strings(tokenizer))
    if pattern is None:
        return text
    while True:
        cleaned = pattern.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned
