"""Tests for golfjax/tokenizer.py against independent references.

Every tokenizer is built here, offline, in milliseconds: a byte-level BPE trained
with the `tokenizers` library (compared with transformers' tokenizer loading the
same directory) and a SentencePiece unigram model trained in memory (compared with
`sentencepiece.SentencePieceProcessor`). transformers' SentencePiece classes are not
used as a reference: in transformers 5, `LlamaTokenizer(vocab_file=...)` on such a
file encodes text to no ids at all.
"""

from __future__ import annotations

import io
import json
import pathlib
import re

import numpy as np
import pytest
import sentencepiece
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from golfjax import tokenizer as tokenizer_lib

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Solve 12 + 30 = 42, then check the answer twice.",
    "Les élèves calculent 3 × 7 = 21 ✓ et 6 ÷ 2 = 3.",
    "def double(x):\n    return x * 2\n",
    "Critique: the second step drops a sign; refine the proof.",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
TEXTS = [
    "The quick brown fox.",
    "  leading spaces and\ttabs\n\nnewlines  ",
    "unicode: élèves × ✓ 日本語 🙂",
    "specials inline: <|im_start|>user\nhi<|im_end|> <think>x</think>",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are careful."},
    {"role": "user", "content": "What is 3 × 7?"},
]

# A Qwen-3-style ChatML template, written for this test. Its block tags sit on their
# own indented lines, so the output is only right with trim_blocks and lstrip_blocks.
CHATML_TEMPLATE = """\
{% for message in messages %}
    {% if message.role not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message.role) }}
    {% endif %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
    {% if enable_thinking is defined and not enable_thinking %}
<think>

</think>

    {% endif %}
{% endif %}
"""
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


# Fixture types, for the signatures below.
Tok = tokenizer_lib.Tokenizer
Ref = transformers.PreTrainedTokenizerBase
Dirs = dict[str, pathlib.Path]


def _write_json(path: pathlib.Path, obj: object) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _reference(directory: pathlib.Path) -> Ref:
    # The class `AutoTokenizer.from_pretrained` resolves to from `tokenizer_class`,
    # loaded directly: the auto-class lookup alone costs ~3 s of imports.
    return transformers.PreTrainedTokenizerFast.from_pretrained(directory)


def _train_bpe() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>", "</think>"])  # Qwen 3: added, but not special.
    return tok


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> Dirs:
    """Tokenizer directories sharing one BPE model, differing in their configs."""
    tok = _train_bpe()
    root = tmp_path_factory.mktemp("hf")
    dirs = {name: root / name for name in ("qwen", "llama", "named", "plain")}
    for d in dirs.values():
        d.mkdir()
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}

    tok.save(str(dirs["qwen"] / "tokenizer.json"))
    _write_json(dirs["qwen"] / "tokenizer_config.json", {
        **base, "bos_token": None, "eos_token": "<|im_end|>",
        # The older AddedToken-dict form, as many Hub checkpoints still have it.
        "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True},
        "chat_template": CHATML_TEMPLATE,
    })
    _write_json(dirs["qwen"] / "generation_config.json",
                {"eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]})

    # Llama-3-like: a bos added by the post-processor, no pad, the template in its own
    # file (transformers >= 4.47), which must win over the decoy in the config.
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(dirs["llama"] / "tokenizer.json"))
    _write_json(dirs["llama"] / "tokenizer_config.json",
                {**base, "bos_token": bos, "eos_token": "<|endoftext|>", "chat_template": "DECOY"})
    (dirs["llama"] / "chat_template.jinja").write_text(LLAMA_TEMPLATE, encoding="utf-8")

    tok.save(str(dirs["named"] / "tokenizer.json"))
    _write_json(dirs["named"] / "tokenizer_config.json", {
        **base, "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                          {"name": "default", "template": CHATML_TEMPLATE}],
    })

    tok.save(str(dirs["plain"] / "tokenizer.json"))
    _write_json(dirs["plain"] / "tokenizer_config.json", {**base, "eos_token": "<|endoftext|>"})
    return dirs


@pytest.fixture(scope="module")
def qwen(hf_dirs: Dirs) -> Tok:
    return tokenizer_lib.load_tokenizer(hf_dirs["qwen"])


@pytest.fixture(scope="module")
def qwen_ref(hf_dirs: Dirs) -> Ref:
    return _reference(hf_dirs["qwen"])


@pytest.mark.parametrize("text", TEXTS)
def test_hf_encode_decode_match_transformers(qwen: Tok, qwen_ref: Ref, text: str) -> None:
    ids = qwen.encode(text)
    assert ids == qwen_ref.encode(text, add_special_tokens=False)
    for skip in (True, False):
        assert qwen.decode(ids, skip_special_tokens=skip) == qwen_ref.decode(
            ids, skip_special_tokens=skip)
    assert qwen.decode(ids, skip_special_tokens=False) == text  # Byte-level: lossless.


def test_hf_special_ids(qwen: Tok, qwen_ref: Ref) -> None:
    im_end, eot = qwen_ref.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert qwen.bos_id is None and qwen_ref.bos_token_id is None
    assert (qwen.eos_id, qwen.pad_id) == (im_end, eot)
    assert (qwen_ref.eos_token_id, qwen_ref.pad_token_id) == (im_end, eot)
    assert qwen.stop_ids == (im_end, eot)  # eos first, then generation_config's extra.
    assert qwen.vocab_size == len(qwen_ref)
    with pytest.raises(ValueError, match="has no bos"):
        qwen.encode("x", add_bos=True)


def test_decode_accepts_numpy_rows(qwen: Tok) -> None:
    ids = qwen.encode(TEXTS[0])
    assert qwen.decode(np.asarray(ids, np.int32)) == TEXTS[0]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("thinking", [{}, {"enable_thinking": True}, {"enable_thinking": False}])
def test_chat_template_matches_transformers(
    qwen: Tok, qwen_ref: Ref, add_generation_prompt: bool, thinking: dict[str, bool]
) -> None:
    kwargs = dict(add_generation_prompt=add_generation_prompt, **thinking)
    text = qwen.apply_chat_template(MESSAGES, **kwargs)
    assert text == qwen_ref.apply_chat_template(MESSAGES, tokenize=False, **kwargs)
    assert qwen.apply_chat_template(MESSAGES, tokenize=True, **kwargs) == (
        qwen_ref.apply_chat_template(MESSAGES, tokenize=True, return_dict=False, **kwargs))


def test_chat_template_renders_expected_text(qwen: Tok) -> None:
    # Worked out by hand from CHATML_TEMPLATE: the empty think block closes thinking.
    expected = ("<|im_start|>system\nYou are careful.<|im_end|>\n"
                "<|im_start|>user\nWhat is 3 × 7?<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen.apply_chat_template(MESSAGES, enable_thinking=False) == expected
    ids = qwen.apply_chat_template(MESSAGES, enable_thinking=False, tokenize=True)
    # Chat control strings become single ids, not pieces of text.
    assert ids.count(qwen.encode("<|im_start|>")[0]) == 3
    assert ids.count(qwen.eos_id) == 2


def test_template_raise_exception_is_a_clear_error(qwen: Tok) -> None:
    with pytest.raises(ValueError, match=r"Chat template of .*qwen failed: Unknown role: tool"):
        qwen.apply_chat_template([{"role": "tool", "content": "42"}])


def test_llama_style_bos_pad_fallback_and_jinja_file(hf_dirs: Dirs) -> None:
    tok = tokenizer_lib.load_tokenizer(hf_dirs["llama"])
    ref = _reference(hf_dirs["llama"])
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert tok.pad_id == tok.eos_id  # No pad token configured: documented fallback.
    assert tok.stop_ids == (tok.eos_id,)
    for text in TEXTS:
        # transformers adds bos through the tokenizer.json post-processor.
        assert tok.encode(text, add_bos=True) == ref.encode(text)
    text = tok.apply_chat_template(MESSAGES)
    assert text.startswith("<|begin_of_text|>system: ") and "DECOY" not in text
    assert text == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(MESSAGES, tokenize=True)[0] == tok.bos_id


def test_named_templates_use_default(hf_dirs: Dirs, qwen: Tok) -> None:
    tok = tokenizer_lib.load_tokenizer(hf_dirs["named"])
    ref = _reference(hf_dirs["named"])
    text = tok.apply_chat_template(MESSAGES)
    assert text == qwen.apply_chat_template(MESSAGES)
    assert text == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_generation_tags_and_tools_default(hf_dirs: Dirs, tmp_path: pathlib.Path) -> None:
    # `{% generation %}` must parse, and `tools` must be None (not undefined) as in
    # transformers, or `tools is not none` would be true for every prompt.
    template = ("{% if tools is not none %}TOOLS {% endif %}{% for m in messages %}"
                "{% generation %}{{ m.content | upper }}{% endgeneration %}|{% endfor %}")
    (tmp_path / "tokenizer.json").write_bytes((hf_dirs["qwen"] / "tokenizer.json").read_bytes())
    _write_json(tmp_path / "tokenizer_config.json",
                {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template})
    tok = tokenizer_lib.load_tokenizer(tmp_path)
    ref = _reference(tmp_path)
    assert tok.apply_chat_template(MESSAGES) == "YOU ARE CAREFUL.|WHAT IS 3 × 7?|"
    assert tok.apply_chat_template(MESSAGES) == ref.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert tok.apply_chat_template(MESSAGES, tools=tools).startswith("TOOLS ")


def test_plain_fallback_template(hf_dirs: Dirs) -> None:
    tok = tokenizer_lib.load_tokenizer(hf_dirs["plain"])
    assert tok.chat_template == tokenizer_lib.PLAIN_CHAT_TEMPLATE
    assert tok.apply_chat_template(MESSAGES) == (
        "system: You are careful.\nuser: What is 3 × 7?\nassistant: ")
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=False) == (
        "system: You are careful.\nuser: What is 3 × 7?\n")


def test_vocab_size_check(hf_dirs: Dirs, qwen: Tok) -> None:
    n = qwen.vocab_size
    tokenizer_lib.load_tokenizer(hf_dirs["qwen"], vocab_size=n)
    tokenizer_lib.load_tokenizer(hf_dirs["qwen"], vocab_size=n + 64)  # Padded embedding.
    with pytest.raises(ValueError, match=rf"{n} token ids .* only {n - 1} rows") as e:
        tokenizer_lib.load_tokenizer(hf_dirs["qwen"], vocab_size=n - 1)
    assert str(hf_dirs["qwen"]) in str(e.value)


def test_missing_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tokenizer_lib.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer.json and tokenizer.model"):
        tokenizer_lib.load_tokenizer(tmp_path)


def test_configured_token_outside_vocab(hf_dirs: Dirs, tmp_path: pathlib.Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((hf_dirs["qwen"] / "tokenizer.json").read_bytes())
    _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|not_a_token|>"})
    message = "eos_token '<|not_a_token|>' is not in the vocabulary"
    with pytest.raises(ValueError, match=re.escape(message)):
        tokenizer_lib.load_tokenizer(tmp_path)


# --- SentencePiece -------------------------------------------------------------------

SP_TEXTS = ["The quick brown fox jumps.", "check the answer twice", "x * 2 = 42"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=120,
        hard_vocab_limit=False, minloglevel=2)  # Defaults: unk 0, bos 1, eos 2, no pad.
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def test_sp_matches_sentencepiece(sp_model: pathlib.Path) -> None:
    ref = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    tok = tokenizer_lib.load_tokenizer(sp_model)
    assert tok.vocab_size == ref.get_piece_size()
    assert (tok.bos_id, tok.eos_id) == (ref.bos_id(), ref.eos_id()) == (1, 2)
    assert ref.pad_id() == -1 and tok.pad_id == tok.eos_id  # Fallback to eos.
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    for text in SP_TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text)
        assert tok.encode(text, add_bos=True) == [1] + ids
        assert tok.decode(ids) == ref.decode(ids) == text
    # Control pieces written as text become their ids, and print back when asked.
    ids = tok.encode("<s>check</s>")
    assert ids == [1] + ref.encode("check") + [2]
    assert tok.decode(ids) == "check"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>check</s>"


def test_sp_directory_with_chat_template(sp_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ref = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    (tmp_path / "tokenizer.model").write_bytes(sp_model.read_bytes())
    _write_json(tmp_path / "tokenizer_config.json", {"chat_template": LLAMA_TEMPLATE})
    tok = tokenizer_lib.load_tokenizer(tmp_path, vocab_size=ref.get_piece_size())
    messages = [{"role": "user", "content": "check the answer"}]
    assert tok.apply_chat_template(messages) == "<s>user: check the answer</s>assistant:"
    assert tok.apply_chat_template(messages, tokenize=True) == (
        [1] + ref.encode("user: check the answer") + [2] + ref.encode("assistant:"))
