"""golfjax_py_test: one Bazel test target per pytest file."""

def golfjax_py_test(name, src, size = "medium", tags = [], data = []):
    """Runs one pytest file under Bazel, with tests/conftest.py and pytest.ini.

    The tests are pytest-style (plain functions, fixtures, conftest.py), so the
    target's main is the shared runner tests/pytest_main.py and the test file is its
    argument, not the program.

    Args:
      name: target name, the path under tests/ with "/" turned into "_"
        (tests/losses/policy_test.py -> losses_policy_test); tests/build_test.py
        checks this.
      src: the test file, relative to the workspace root (also its runfiles path,
        which is what pytest is given).
      size: Bazel test size; sets the timeout (medium 300 s, large 900 s, ...).
      tags: Bazel tags, e.g. ["exclusive"] for a test that must run alone.
      data: extra runtime files beyond //:test_support.
    """
    native.py_test(
        name = name,
        srcs = [src, "//:tests/pytest_main.py"],
        main = "//:tests/pytest_main.py",
        args = [src],
        data = data,
        deps = ["//:test_support"],
        size = size,
        tags = tags,
        # Bazel would otherwise add an empty __init__.py to every runfiles directory,
        # turning namespace packages into regular ones and diverging from `make test`.
        legacy_create_init = False,
    )
