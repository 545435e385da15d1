"""Keeps the Bazel BUILD file in step with the test files.

Every `tests/**/*_test.py` must have a `golfjax_py_test` target in BUILD, named from
its path (tests/losses/policy_test.py -> losses_policy_test), and every target must
name a file that exists. Runs under plain pytest and under Bazel, where the target's
data holds BUILD and every test file (a glob), so a missing target fails here too.
"""

from __future__ import annotations

import pathlib
import re

# Not resolved: under Bazel this is the runfiles tree, whose files are symlinks.
ROOT = pathlib.Path(__file__).parent.parent
# One `golfjax_py_test(...)` call: keyword arguments up to the closing parenthesis
# at the start of a line, as the BUILD formatter writes them.
TARGET_RE = re.compile(r"^golfjax_py_test\((.*?)^\)", re.DOTALL | re.MULTILINE)


def _string_arg(call: str, key: str) -> str:
    match = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', call, re.MULTILINE)
    assert match, f"golfjax_py_test without a literal {key} = \"...\":\n{call}"
    return match.group(1)


def read_targets() -> dict[str, str]:
    """Maps each golfjax_py_test's src to its name."""
    build = (ROOT / "BUILD").read_text(encoding="utf-8")
    targets: dict[str, str] = {}
    for call in TARGET_RE.findall(build):
        src, name = _string_arg(call, "src"), _string_arg(call, "name")
        assert src not in targets, f"{src} has two targets in BUILD"
        targets[src] = name
    return targets


def name_for(src: str) -> str:
    """tests/losses/policy_test.py -> losses_policy_test."""
    path = pathlib.PurePosixPath(src).relative_to("tests").with_suffix("")
    return "_".join(path.parts)


def test_build_parses_targets() -> None:
    # Guards the regex: this file's own target must be found.
    assert read_targets().get("tests/build_test.py") == "build_test"


def test_every_test_file_has_a_target() -> None:
    test_files = sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/**/*_test.py"))
    missing = [src for src in test_files if src not in read_targets()]
    assert not missing, (
        "test files without a golfjax_py_test target in BUILD: "
        + ", ".join(f'golfjax_py_test(name = "{name_for(s)}", src = "{s}")'
                    for s in missing))


def test_every_target_names_an_existing_file() -> None:
    absent = [src for src in read_targets() if not (ROOT / src).is_file()]
    assert not absent, f"BUILD names test files that do not exist: {absent}"


def test_target_names_follow_paths() -> None:
    wrong = {name: name_for(src) for src, name in read_targets().items()
             if name != name_for(src)}
    assert not wrong, f"BUILD target names that do not follow their paths: {wrong}"


# `from tests.x import y_test` or `import tests.x.y_test`: a test module imported as a helper.
TEST_IMPORT_RE = re.compile(
    r"^\s*(?:from\s+tests(?:\.\w+)*\s+import\s+[^\n]*\b\w+_test\b"
    r"|from\s+tests(?:\.\w+)*\.\w+_test\s+import"
    r"|import\s+tests(?:\.\w+)*\.\w+_test\b)",
    re.MULTILINE)


def test_no_test_file_imports_another() -> None:
    # A target carries its own test file and //:test_support (tests/**/*.py except
    # *_test.py), so a helper imported from another test file is missing under Bazel.
    offenders = sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/**/*.py")
        if TEST_IMPORT_RE.search(p.read_text(encoding="utf-8")))
    assert not offenders, (
        f"test files that import another test file (move the shared helper to a tests/ "
        f"module not named *_test.py): {offenders}")


def test_test_import_pattern_finds_each_form() -> None:
    for line in ("from tests.loops import rl_test", "from tests.loops import stand_in, rl_test",
                 "from tests.loops.rl_test import _Task", "import tests.loops.rl_test"):
        assert TEST_IMPORT_RE.search(line), line
    for line in ("from tests.loops import stand_in", "from tests import two_processes",
                 "import tests.loops.stand_in"):
        assert not TEST_IMPORT_RE.search(line), line


def test_fast_only_runner_deselects_slow_tests_and_passes_a_file_of_only_slow_ones(tmp_path):
    # tests/pytest_main.py as tools/bazel_test.sh runs it (GOLFJAX_FAST_ONLY=1).
    import os
    import subprocess
    import sys

    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (tmp_path / "only_slow_test.py").write_text(
        "import pytest\n\n@pytest.mark.slow\ndef test_slow():\n    raise AssertionError\n")
    (tmp_path / "mixed_test.py").write_text(
        "import pytest\n\n@pytest.mark.slow\ndef test_slow():\n    raise AssertionError\n\n"
        "def test_fast():\n    pass\n\ndef test_fast_failing():\n    raise AssertionError\n")
    main = str((ROOT / "tests" / "pytest_main.py").resolve())

    def run(name, fast_only):
        env = {**os.environ, "GOLFJAX_FAST_ONLY": fast_only}
        env.pop("XML_OUTPUT_FILE", None)
        return subprocess.run([sys.executable, main, name, "-p", "no:xdist"], cwd=tmp_path,
                              env=env, capture_output=True, text=True)

    assert run("only_slow_test.py", "1").returncode == 0
    assert run("only_slow_test.py", "0").returncode == 1
    mixed = run("mixed_test.py", "1")
    assert mixed.returncode == 1 and "1 failed, 1 passed, 1 deselected" in mixed.stdout
