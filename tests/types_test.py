"""Every array name's shape uses the symbols golfjax/types.py defines."""

from __future__ import annotations

import pathlib
import re

from golfjax import types

ROOT = pathlib.Path(__file__).parent.parent
DIRECTORIES = ("golfjax", "benchmarks", "experiments", "launch", "tests", "tools")
# A shape suffix: axes joined by "x", each a run of symbols (a flattened
# product) or a literal size, after a lowercase name and an underscore.
_AXIS = r"(?:[A-Z][A-Za-z0-9]*|[0-9]+)"
SHAPED_NAME = re.compile(rf"\b[a-z][a-z0-9_]*?_({_AXIS}(?:x{_AXIS})*)\b")
SYMBOL = re.compile(r"[A-Z][a-z0-9]*|[0-9]+")


def symbols(shape: str) -> list[str]:
    """`NxKxQRxDh` -> N, K, Q, R, Dh; literal sizes are left out."""
    return [s for axis in shape.split("x") for s in SYMBOL.findall(axis) if not s.isdigit()]


def undefined_symbols(text: str) -> dict[str, str]:
    """Each undefined symbol of `text`'s shaped names, with a name that uses it."""
    found = {}
    for match in SHAPED_NAME.finditer(text):
        for symbol in symbols(match.group(1)):
            if symbol not in types.SHAPE_LETTERS:
                found.setdefault(symbol, match.group(0))
    return found


def test_symbols_split_flattened_axes():
    assert symbols("NqxNxKxBqRxDh") == ["Nq", "N", "K", "Bq", "R", "Dh"]
    assert symbols("Nx1xKxRxDh") == ["N", "K", "R", "Dh"]
    assert undefined_symbols("x_NxT = y_NxZxT; MAX_T = 3; f(reward_BxG)") == {"Z": "y_NxZxT"}


def test_every_shaped_name_uses_defined_symbols():
    undefined = {}
    for directory in DIRECTORIES:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path.resolve() == pathlib.Path(__file__).resolve():
                continue  # Its own made-up names.
            for symbol, name in undefined_symbols(path.read_text(encoding="utf-8")).items():
                undefined.setdefault(symbol, f"{path.relative_to(ROOT)}: {name}")
    assert not undefined, (
        "shape symbols not in golfjax/types.py's SHAPE_LETTERS: "
        + "; ".join(f"{s} ({where})" for s, where in sorted(undefined.items())))
