"""Tests for golfjax/refusals.py: each expected refusal as one line and an exit code.

The command lines' own runs are in tests/experiments/main_test.py and
tests/export_test.py; here the refusals that a test cannot cause for real as
root (a read-only or full file system) are raised by hand, bare and wrapped as
Orbax wraps the error of its writer thread.
"""

import errno

import pytest

from golfjax import refusals
from golfjax.config_dict import ConfigError
from golfjax.train.checkpoint import CheckpointError
from golfjax.train.workdir import WorkdirLockedError


def _raise(error):
    def fn():
        raise error
    return fn


def _wrapped(error):
    try:
        raise error
    except OSError as e:
        try:
            raise ValueError("the save failed") from e
        except ValueError as wrapper:
            return wrapper


@pytest.mark.parametrize("error, code, line", [
    (ConfigError("config.optimizer.lr=inf; expected a finite number > 0"), 2,
     "config.optimizer.lr=inf; expected a finite number > 0"),
    (WorkdirLockedError("/w is in use by another run: pid 7 on host h holds /w/lock"), 1,
     "/w is in use by another run: pid 7 on host h holds /w/lock"),
    (CheckpointError("no intact checkpoint in /w/checkpoints: /w/checkpoints/1 is missing"), 1,
     "no intact checkpoint in /w/checkpoints: /w/checkpoints/1 is missing"),
    (FloatingPointError("train step 3: non-finite loss, gradient or update\n(loss=nan)"), 1,
     "train step 3: non-finite loss, gradient or update (loss=nan)"),
    (OSError(errno.EROFS, "Read-only file system", "/w/lock"), 1, "cannot write /w/lock: Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/w"), 1, "cannot write /w: Permission denied"),
    (_wrapped(OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/3")), 1,
     "cannot write /w/checkpoints/3: No space left on device"),
    # As Orbax raised it on a full tmpfs (ValueError from TensorStore, the OS error by its code).
    (ValueError('RESOURCE_EXHAUSTED: Error writing "rng/0" in OCDBT database at local file "/w/c/2/": Failed'
                ' writing: "/w/c/2/d/200a": Failed to write 753 bytes to file 5: No space left on device'
                " [os_error_code='28']"), 1, "cannot write /w/c/2/d/200a: No space left on device"),
])
def test_an_expected_refusal_is_its_message_alone(error, code, line, capsys):
    assert refusals.exit_code(_raise(error), verbose=False) == code
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_verbose_adds_the_traceback_before_the_line(capsys):
    assert refusals.exit_code(_raise(ConfigError("config.seed=-1; expected an int")), verbose=True) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("\nconfig.seed=-1; expected an int\n")


def test_anything_else_keeps_its_traceback():
    with pytest.raises(KeyError):
        refusals.exit_code(_raise(KeyError("a bug")), verbose=False)
    with pytest.raises(FileNotFoundError):  # Not a directory that cannot be written.
        refusals.exit_code(_raise(FileNotFoundError(errno.ENOENT, "No such file", "/x")), verbose=False)
    assert refusals.exit_code(lambda: None, verbose=False) == 0
