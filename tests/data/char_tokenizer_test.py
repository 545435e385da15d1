"""Tests for golfjax/data/char_tokenizer.py."""

import os

from golfjax.data import char_tokenizer
from golfjax.tokenizer import load_tokenizer


def test_round_trip_and_specials(tmp_path):
    tok = char_tokenizer.make_task_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == char_tokenizer.VOCAB_SIZE <= 128
    assert tok.eos_id == 2 and tok.stop_ids == (2,) and tok.pad_id == 0 and tok.bos_id is None
    text = "What is 347+589?\nThe answer is 936.\t~"
    ids = tok.encode(text)
    assert len(ids) == len(text)  # One token per character.
    assert tok.decode(ids) == text
    # A character outside the vocabulary becomes <unk>, dropped on decode.
    assert tok.decode(tok.encode("a\u00e9b")) == "ab"


def test_chat_template_ignores_thinking_flag(tmp_path):
    tok = char_tokenizer.make_task_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "1+1?"}]
    text = tok.apply_chat_template(messages)
    assert text == "<|user|>1+1?<|end|><|assistant|>"
    assert tok.apply_chat_template(messages, enable_thinking=False) == text
    ids = tok.apply_chat_template(messages, tokenize=True)
    assert ids[0] == 4 and ids[-2:] == [2, 5] and len(ids) == 4 + 3


def test_files_are_deterministic_and_reloadable(tmp_path):
    a = char_tokenizer.write_char_tokenizer(tmp_path / "a")
    b = char_tokenizer.write_char_tokenizer(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    assert load_tokenizer(a, vocab_size=128).vocab_size == 103
