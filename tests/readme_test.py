"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert _python_blocks(), "README.md lost its Python examples"


def test_readme_python_examples_run():
    # The "Extending" example registers a loss, a critic and a task: put the
    # registries back so that no other test in this process sees them.
    from golfjax import feedback, losses, rewards

    registries = (losses.LOSSES, feedback.CRITICS, rewards.TASKS)
    saved = [dict(r) for r in registries]
    try:
        for block in _python_blocks():
            exec(compile(block, str(README), "exec"), {})  # noqa: S102
        assert "clipped_reinforce" in losses.LOSSES and "double" in rewards.TASKS
    finally:
        for registry, before in zip(registries, saved):
            registry.clear()
            registry.update(before)
