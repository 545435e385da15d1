"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert _python_blocks(), "README.md lost its Python examples"


def test_readme_python_examples_run():
    for block in _python_blocks():
        exec(compile(block, str(README), "exec"), {})  # noqa: S102
