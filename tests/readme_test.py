"""The README and docs/: examples run, commands parse, links and cited anchors resolve.

Command checks (a command builds a valid config, or uses only flags its script
defines) cover README.md and docs/benchmarks.md: the commands a user runs
today. docs/results.md is exempt: each of its commands is recorded exactly as
it was run at the commit of its measurement, which is where it is valid, so
a later rename of a key or a flag must not rewrite it. Its links and anchors
are checked like every other document's.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# The documents whose commands must work with today's code (module docstring).
CURRENT = [README, ROOT / "docs" / "benchmarks.md"]


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


def _commands() -> list[list[str]]:
    """Every command of the sh blocks, indented code blocks and inline `python ...`
    spans of README.md and docs/benchmarks.md (`CURRENT`), as argv."""
    import shlex

    text = "\n".join(path.read_text() for path in CURRENT)
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        lines += block.replace("\\\n", " ").splitlines()
    # Four-space indented commands (outside fenced blocks), continuation lines joined.
    unfenced = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for block in re.findall(r"(?:^    \S.*\n?)+", unfenced, flags=re.MULTILINE):
        joined = block.replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines()
                  if re.match(r"\s*(?:\.venv/bin/)?python ", line)]
    lines += re.findall(r"`((?:\.venv/bin/)?python [^`]*)`", text)
    commands = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def test_readme_experiment_commands_build_valid_configs():
    # What experiments/main.py does with the flags before any work: parse the
    # config file and its overrides, then build and validate the RunConfig.
    from absl import flags as absl_flags
    from ml_collections import config_flags

    from golfjax import config as config_lib

    commands = [c for c in _commands() if c[1:3] == ["-m", "experiments.main"]
                and "FILE:VARIANT" not in " ".join(c)]  # The prose's template.
    assert len(commands) >= 6
    for argv in commands:
        argv = ["main", *argv[3:]]
        values = absl_flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                        sys_argv=argv)
        absl_flags.DEFINE_string("workdir", None, "", flag_values=values)
        values(argv)
        assert values.workdir, argv
        config_lib.build(config_lib.RunConfig, values.config)


def test_readme_script_commands_use_flags_the_scripts_define():
    import subprocess
    import sys

    root = ROOT
    scripts = [c for c in _commands() if c[0].endswith("python") and c[1].startswith("benchmarks/")]
    modules = [c for c in _commands()
               if c[0].endswith("python") and c[1] == "-m" and c[2].startswith("golfjax.")]
    assert {c[1] for c in scripts} >= {"benchmarks/golf_vs_grpo.py", "benchmarks/staleness_sweep.py",
                                       "benchmarks/model.py", "benchmarks/train_step.py",
                                       "benchmarks/accelerator.py"}
    assert {c[2] for c in modules} >= {"golfjax.demo", "golfjax.export", "golfjax.data.prepare"}
    helptexts: dict[tuple[str, ...], str] = {}
    for argv in scripts + modules:
        target = tuple(argv[1:2] if argv[1] != "-m" else argv[1:3])
        rest = argv[len(target) + 1:]
        if target not in helptexts:
            helptexts[target] = subprocess.run(
                [sys.executable, *target, "--help"], cwd=root, capture_output=True, text=True,
                timeout=120).stdout
        helptext = helptexts[target]
        for arg in rest:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert flag in helptext, f"{' '.join(argv)}: {flag} is not a flag of {target[-1]}"


def test_readme_is_a_guide_not_a_lab_notebook():
    text = README.read_text()
    assert len(text.splitlines()) <= 350, "README.md is a user's guide of at most 350 lines"
    # Measurements, with their commits, belong to docs/results.md.
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text)
              if re.search(r"[a-f]", h) and re.search(r"[0-9]", h)]
    assert not hashes, f"README.md names commits {hashes}; measurements go to docs/results.md"


def _anchors(path: pathlib.Path) -> set[str]:
    """Explicit `<a id>` anchors and GitHub's heading slugs of a Markdown file."""
    text = path.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_markdown_links_and_anchors_resolve():
    for path in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if "://" in target:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.name}: link to missing {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{path.name}: no anchor #{anchor} in {file_part}"


def test_code_cites_sections_of_docs_algorithms_md_that_exist():
    anchors = _anchors(ROOT / "docs" / "algorithms.md")
    cited = {}
    for folder in ("golfjax", "benchmarks", "experiments", "tests"):
        for source in (ROOT / folder).rglob("*.py"):
            for anchor in re.findall(r"docs/algorithms\.md#([\w\-]+)", source.read_text()):
                cited.setdefault(anchor, source.relative_to(ROOT))
    assert cited, "no code cites docs/algorithms.md"
    missing = {a: str(f) for a, f in cited.items() if a not in anchors}
    assert not missing, f"cited sections missing from docs/algorithms.md: {missing}"
