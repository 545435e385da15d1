"""Expected refusals as one line on stderr and an exit code, for the command lines.

A run or an export that stops for a reason the user can act on (a config value,
a held lock, a directory it cannot write, no intact checkpoint, the non-finite
policy) prints the message alone, one line on stderr, and exits with 2 for bad
input (the config, a flag) or 1 for the others; `--verbose` prints the
traceback as well. Anything else is a bug and keeps its traceback.
experiments/main.py and golfjax/export.py use `exit_code`.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable

from golfjax.config_dict import ConfigError
from golfjax.train.checkpoint import CheckpointError
from golfjax.train.workdir import WorkdirLockedError

BAD_INPUT, REFUSED = 2, 1
# OSErrors that mean "this directory cannot take the run's files".
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


# How TensorStore (Orbax's array writer) reports the OS error behind a failed
# write: `...Failed writing: "<path>": ... [os_error_code='28']`.
_TENSORSTORE_OS_ERROR = re.compile(r"""(?:Failed writing|Error writing local file): "([^"]+)".*os_error_code='(\d+)'""")


def _cannot_write(e: BaseException) -> OSError | None:
    """The OSError of an unwritable or full directory in `e`'s chain, if any
    (Orbax and other libraries wrap the one they hit, or only name its code)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _UNWRITABLE:
            return e
        match = _TENSORSTORE_OS_ERROR.search(str(e))
        if match and int(match.group(2)) in _UNWRITABLE:
            code = int(match.group(2))
            return OSError(code, os.strerror(code), match.group(1))
        e = e.__cause__ or e.__context__
    return None


def classify(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) of an expected refusal; None for anything else."""
    if isinstance(e, ConfigError):
        return BAD_INPUT, _line(e)
    if isinstance(e, (WorkdirLockedError, CheckpointError, FloatingPointError)):
        return REFUSED, _line(e)
    unwritable = _cannot_write(e)
    if unwritable is not None:
        where = f"{unwritable.filename}: " if unwritable.filename else ""
        return REFUSED, f"cannot write {where}{unwritable.strerror or unwritable}"
    return None


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())


def exit_code(fn: Callable[[], object], *, verbose: bool) -> int:
    """Runs `fn`; an expected refusal prints its line (and with `verbose` the
    traceback) on stderr and returns its exit code; 0 when `fn` returns."""
    try:
        fn()
    except Exception as e:  # Only expected refusals are caught; the rest is re-raised.
        refusal = classify(e)
        if refusal is None:
            raise
        if verbose:
            traceback.print_exc()
        code, message = refusal
        print(message, file=sys.stderr, flush=True)
        return code
    return 0
