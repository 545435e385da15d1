"""One small tokenizer adapter over SentencePiece and Hugging Face `tokenizer.json`.

Host-side only: the sampler and the data pipeline turn text into token ids here and
never inside jit. `load_tokenizer` accepts

- a directory holding `tokenizer.json` (the `tokenizers` library's format) or
  `tokenizer.model` (SentencePiece), optionally with `tokenizer_config.json`
  (`chat_template`, `bos_token`, `eos_token`, `pad_token`), `special_tokens_map.json`,
  `chat_template.jinja` and `generation_config.json` (`eos_token_id`), or
- a SentencePiece `.model` file.

Chat templates are rendered the way `transformers` renders them (sandboxed Jinja,
`trim_blocks`, `lstrip_blocks`, `raise_exception`, `bos_token`/`eos_token` variables),
so a prompt built here tokenizes to the same ids as `AutoTokenizer.apply_chat_template`.
Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import sentencepiece
import tokenizers

# Used when no chat template is configured (base models, bare SentencePiece files):
# one "role: content" line per message, then "assistant: " as the generation prompt.
PLAIN_CHAT_TEMPLATE = (
        "{% for message in messages %}"
        "{{ message['role'] }}: {{ message['content'] }}{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
)

_HF_FILE = "tokenizer.json"
_SP_FILE = "tokenizer.model"


class _HFBackend:
    """`tokenizers.Tokenizer` from a `tokenizer.json` file."""

    def __init__(self, path: str) -> None:
        self._tok = tokenizers.Tokenizer.from_file(path)

    def encode(self, text: str) -> list[int]:
        # No post-processor: the chat template (or `add_bos`) decides on special tokens,
        # exactly as `apply_chat_template` tokenizes with `add_special_tokens=False`.
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id)

    def num_ids(self) -> int:
        # Added tokens may sit above the base vocabulary (or leave gaps), so the largest
        # id, not the count, is what must fit in the embedding.
        return max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def default_specials(self) -> dict[str, int]:
        # tokenizer.json does not say which token is bos/eos/pad; the config does.
        return {}


class _SPBackend:
    """`sentencepiece.SentencePieceProcessor` from a `.model` file."""

    def __init__(self, path: str) -> None:
        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        n = self._sp.get_piece_size()
        # SentencePiece never emits control pieces (<s>, </s>) from text, but rendered
        # chat templates contain them as text; split them out as transformers' slow
        # tokenizers do, so `bos_token` in a template becomes the bos id.
        self._special = {
                self._sp.id_to_piece(i): i
                for i in range(n)
                if self._sp.is_control(i) or self._sp.is_unknown(i)
        }
        alternatives = sorted(self._special, key=len, reverse=True)
        self._split_re = re.compile(
                "(" + "|".join(map(re.escape, alternatives)) + ")" if alternatives else "(?!)"
        )

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self._split_re.split(text):
            if chunk in self._special:
                ids.append(self._special[chunk])
            elif chunk:
                ids.extend(self._sp.encode(chunk))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        special = set(self._special.values())
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in special])
        # SentencePiece decodes control ids to "", so print their pieces by hand.
        parts, run = [], []
        for i in ids:
            if i in special:
                parts += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(parts + [self._sp.decode(run)])

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # Unknown pieces map to the unk id; only an exact match counts.
        return i if self._sp.id_to_piece(i) == token else None

    def id_to_token(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def num_ids(self) -> int:
        return self._sp.get_piece_size()

    def default_specials(self) -> dict[str, int]:
        # A SentencePiece model declares its own ids; -1 means "none".
        ids = {"bos_token": self._sp.bos_id(), "eos_token": self._sp.eos_id(),
               "pad_token": self._sp.pad_id()}
        return {name: i for name, i in ids.items() if i >= 0}


# What `Tokenizer` needs from a tokenizer library: encode, decode, token <-> id, the
# number of ids and the special ids the file itself declares.
_Backend = _HFBackend | _SPBackend


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own `tojson` HTML-escapes, which would change tool schemas in prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some HF templates to mark
    assistant spans for masks) and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _compile_template(source: str) -> jinja2.Template:
    # The same environment transformers uses: templates come from checkpoints on the
    # Hub, i.e. untrusted code, hence the immutable sandbox.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Text <-> token ids, special ids and chat prompts for one model.

    Attributes:
        path: where it was loaded from (for error messages).
        vocab_size: number of token ids, i.e. one more than the largest id, added tokens
            included. May be smaller than the model's embedding (padded vocabularies).
        bos_id, eos_id: `None` when the tokenizer has no such token (Qwen has no bos).
        pad_id: the pad token; falls back to `eos_id` (then 0) when there is none. Padded
            positions are masked everywhere, so any valid id will do.
        stop_ids: ids that end a generation: eos plus `generation_config.json`'s
            `eos_token_id` (instruct models stop on e.g. both <|im_end|> and <|endoftext|>).
        bos_token, eos_token, pad_token: the token strings, as chat templates see them.
        chat_template: the Jinja source in use (`PLAIN_CHAT_TEMPLATE` if none configured).
    """

    path: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    stop_ids: tuple[int, ...]
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    chat_template: str
    _backend: _Backend = dataclasses.field(repr=False)
    _template: jinja2.Template = dataclasses.field(repr=False)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it become their ids."""
        ids = self._backend.encode(text)
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"add_bos=True but the tokenizer at {self.path} has no bos.")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (any int sequence, e.g. a NumPy row)."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    def apply_chat_template(
            self,
            messages: Sequence[Mapping[str, Any]],
            *,
            add_generation_prompt: bool = True,
            tokenize: bool = False,
            **template_kwargs: Any,
    ) -> str | list[int]:
        """Renders `messages` ([{"role": ..., "content": ...}]) with the chat template.

        `template_kwargs` reach the template as variables, e.g. `enable_thinking=False`
        for Qwen 3, so a GOLF refinement prompt can use the rollout's thinking mode.
        With `tokenize=True` the rendered text is encoded without adding bos: templates
        write their own bos, as in transformers.
        """
        specials = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                    "pad_token": self.pad_token}
        variables = {
                # transformers passes `tools` and `documents` as None, and some templates
                # test `tools is not none`, which an undefined variable would pass.
                "tools": None,
                "documents": None,
                **{name: token for name, token in specials.items() if token is not None},
                **template_kwargs,  # Callers may override any of the above.
        }
        try:
            text = self._template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    **variables,
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"Chat template of {self.path} failed: {e}") from e
        return self.encode(text) if tokenize else text

    def encode_prompt(self, question: str, template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        """The ids of one user turn holding `question`, plus the generation prompt.

        Every rollout prompt (RL, evaluation, the cold start's plain examples, the
        data pipeline) is rendered here, so they all see the same template and
        thinking mode (`template_kwargs`).
        """
        return self.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True,
            **dict(template_kwargs or {}))


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_string(value: Any) -> str | None:
    """A config's special token: a string, an AddedToken-like dict, or null."""
    if isinstance(value, Mapping):
        return value["content"]
    return value


def _select_template(config: Mapping[str, Any], directory: str | None, path: str) -> str:
    jinja_file = os.path.join(directory, "chat_template.jinja") if directory else None
    if jinja_file and os.path.isfile(jinja_file):
        # transformers >= 4.47 saves the template beside the config; the file wins.
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        if "default" not in named:
            raise ValueError(f"{path}: chat templates {sorted(named)} include no 'default'.")
        template = named["default"]
    return template or PLAIN_CHAT_TEMPLATE


def load_tokenizer(path: str | os.PathLike[str], *, vocab_size: int | None = None) -> Tokenizer:
    """Loads a tokenizer directory or SentencePiece `.model` file (see module doc).

    Args:
        path: a directory with `tokenizer.json` or `tokenizer.model`, or a `.model` file.
        vocab_size: the model's embedding rows; a tokenizer with more ids than that would
            index past the embedding, so it is rejected here rather than at the first
            out-of-range token (JAX gathers clamp or NaN-fill it without an error).

    Raises:
        FileNotFoundError: `path` is missing or holds no tokenizer file.
        ValueError: the vocabulary exceeds `vocab_size`, or a configured special token or
            template is not usable.
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else None
    if directory is not None:
        hf_file, sp_file = os.path.join(path, _HF_FILE), os.path.join(path, _SP_FILE)
        if os.path.isfile(hf_file):  # Preferred: it carries the added tokens.
            backend: _Backend = _HFBackend(hf_file)
        elif os.path.isfile(sp_file):
            backend = _SPBackend(sp_file)
        else:
            raise FileNotFoundError(
                    f"No tokenizer in {path}: looked for {_HF_FILE} and {_SP_FILE}."
            )
        config = {
                **_read_json(os.path.join(path, "special_tokens_map.json")),
                **_read_json(os.path.join(path, "tokenizer_config.json")),
        }
        generation = _read_json(os.path.join(path, "generation_config.json"))
    elif os.path.isfile(path):
        backend, config, generation = _SPBackend(path), {}, {}
    else:
        raise FileNotFoundError(
                f"No tokenizer at {path}: expected a directory with {_HF_FILE} or {_SP_FILE}, "
                "or a SentencePiece .model file."
        )

    num_ids = backend.num_ids()
    if vocab_size is not None and num_ids > vocab_size:
        raise ValueError(
                f"Tokenizer at {path} has {num_ids} token ids but the model's embedding has only "
                f"{vocab_size} rows."
        )

    def special(name: str) -> tuple[int | None, str | None]:
        token = _token_string(config.get(name))
        if token is None:
            token_id = backend.default_specials().get(name)
            return token_id, None if token_id is None else backend.id_to_token(token_id)
        token_id = backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{path}: {name} {token!r} is not in the vocabulary.")
        return token_id, token

    bos_id, bos_token = special("bos_token")
    eos_id, eos_token = special("eos_token")
    pad_id, pad_token = special("pad_token")

    extra_stops = generation.get("eos_token_id") or []
    extra_stops = [extra_stops] if isinstance(extra_stops, int) else list(extra_stops)
    stop_ids = tuple(dict.fromkeys(([eos_id] if eos_id is not None else []) + extra_stops))

    chat_template = _select_template(config, directory, path)
    try:
        compiled = _compile_template(chat_template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"Chat template of {path} does not parse: {e}") from e
    return Tokenizer(
            path=path,
            vocab_size=num_ids,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id if pad_id is not None else (eos_id if eos_id is not None else 0),
            stop_ids=stop_ids,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            chat_template=chat_template,
            _backend=backend,
            _template=compiled,
    )
