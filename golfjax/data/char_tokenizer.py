"""A tiny character-level tokenizer for the built-in tasks (arith, constraints).

The built-in tasks train a small model from scratch on CPU (the supervised cold
start, then RL), so they need a vocabulary that is tiny, fixed and needs no
download. One token per character keeps digits separate, which is what makes
multi-digit arithmetic learnable by a small transformer.

Vocabulary (103 ids, so it fits the `tiny` model presets' 256-row embedding and
a 128-row one):

- ids 0-5, special tokens: `<pad>`, `<unk>`, `<|end|>` (end of turn and eos),
  `<|system|>`, `<|user|>`, `<|assistant|>`;
- ids 6-100: printable ASCII, space (32) to `~` (126), in code-point order;
- ids 101, 102: newline and tab.

Any other character encodes to `<unk>` (dropped by `decode`).

Chat template: `<|role|>content<|end|>` per message, then `<|assistant|>` as the
generation prompt; no newlines, so every prompt character is content. It
ignores `enable_thinking` and other keywords, so a loop may pass the rollout's
`template_kwargs` unchanged. The turn markers are special tokens; the refinement
prompt builder strips their strings from attempts and critiques so that a
response cannot inject a turn boundary (golfjax/feedback/refinement.py).

The files are written in the Hugging Face layout (`tokenizer.json` built with the
`tokenizers` library, `tokenizer_config.json`, `generation_config.json`) and
loaded by `golfjax.tokenizer.load_tokenizer`, like any checkpoint's tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from golfjax.tokenizer import Tokenizer, load_tokenizer

PAD, UNK, END = "<pad>", "<unk>", "<|end|>"
SPECIAL_TOKENS = (PAD, UNK, END, "<|system|>", "<|user|>", "<|assistant|>")
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer() -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of the vocabulary in the module docstring."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Every character is its own "word"; `[\s\S]` rather than `.` so that
    # newlines are split out too.
    tok.pre_tokenizer = pre_tokenizers.Split(
        tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    # WordLevel decoding joins words with spaces by default; characters must be
    # concatenated as they are.
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([
        tokenizers.AddedToken(t, special=True, normalized=False)
        for t in SPECIAL_TOKENS
    ])
    return tok


def write_char_tokenizer(directory: str | os.PathLike[str]) -> str:
    """Writes the tokenizer files into `directory` (created if needed).

    Deterministic: the same bytes on every call, so a work directory's tokenizer
    can be regenerated rather than copied. Each file is written to a temporary
    file in `directory` and renamed over the old one, so the processes of a
    multi-host run can all write it at once: a reader sees one whole file or
    another, never a half-written one, and they are identical.

    Returns:
      The directory, as a string.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": END,
        "pad_token": PAD,
        "unk_token": UNK,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
    }
    files = {
        # `Tokenizer.save`'s bytes (pretty-printed).
        "tokenizer.json": build_char_tokenizer().to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True),
        "generation_config.json": json.dumps({"eos_token_id": SPECIAL_TOKENS.index(END)}, indent=2),
    }
    for name, text in files.items():
        _write_atomically(os.path.join(directory, name), text)
    return directory


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to a uniquely named temporary file beside `path`, then renames it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's files are private; these are not.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def make_task_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Writes the character tokenizer into `directory` and loads it.

    Args:
      directory: where `tokenizer.json` and its configs go (e.g. the run's
        work directory + "/tokenizer"); saved checkpoints can then ship it.

    Returns:
      The loaded `golfjax.tokenizer.Tokenizer` (vocab_size 103, eos
      `<|end|>`, pad `<pad>`, no bos).
    """
    return load_tokenizer(write_char_tokenizer(directory))
