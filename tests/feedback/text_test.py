"""Tests for golfjax/feedback/text.py (control-string sanitising)."""

from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback import text


def test_strips_special_strings_repeatedly(tmp_path):
    tok = make_task_tokenizer(tmp_path)
    assert set(text.special_token_strings(tok)) == {
        "<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"}
    assert text.strip_special_tokens("a<|end|><|user|>b", tok) == "ab"
    # Removing the inner marker joins the outer halves into a new one.
    assert text.strip_special_tokens("<|e<|end|>nd|>x", tok) == "x"
    assert text.strip_special_tokens("<|end|", tok) == "<|end|"
