"""One run per work directory: a lock file naming its holder.

`lock(workdir)` is a context manager taken before a run writes anything into
its work directory and released when the run ends, normally or by an exception.
The lock is `<workdir>/lock`, held with `fcntl.flock` for as long as the run
lives, and it holds a JSON line naming the holder:

    {"host": "node-3", "pid": 4242, "started": "2026-12-04T18:21:56+00:00"}

A second run on the same directory fails at once with `WorkdirLockedError`
naming that holder. The kernel drops a flock when its process dies, however it
dies (SIGKILL included), so a lock file left behind by a dead run of this host
is stale: the next run takes it over and says so. A flock does not tell much
across hosts (a shared file system may not pass locks between them), so the
holder also refreshes the file's modification time every `HEARTBEAT_S`
seconds from a background thread: a lock file naming another host (or a live
process of this host, a reused pid) is stale once it has not been refreshed
for `STALE_AFTER_S` seconds, and is refused before, with its age and a hint.

Multi-process runs: only process 0 writes into the work directory, so only it
takes the lock; every process then learns whether it did (one broadcast), so a
refused lock stops all of them instead of leaving the others waiting in a
collective for a process 0 that has exited.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

LOCK_NAME = "lock"
# The holder refreshes the lock file this often; a file older than
# STALE_AFTER_S is a dead run's, whichever host it names (clocks of hosts
# sharing a file system may differ by a little, never by minutes).
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirLockedError(RuntimeError):
    """Another run holds the work directory."""


def holder_info() -> dict[str, Any]:
    """This process as a lock holder: host, pid and start time (UTC, ISO 8601)."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe(holder: dict[str, Any] | None) -> str:
    """`holder` as `pid 4242 on host node-3 (since ...)`, for messages."""
    if not holder:
        return "an unknown process (the lock file names none)"
    since = f" (since {holder['started']})" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # It exists, owned by another user.
        return True
    return True


def _read_holder(f: TextIO) -> dict[str, Any] | None:
    f.seek(0)
    text = f.read().strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


class WorkdirLock:
    """The held lock of one work directory; `release()` (idempotent) frees it."""

    def __init__(
        self, path: str, f: TextIO, holder: dict[str, Any], took_over: dict[str, Any] | None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.path = path
        self.holder = holder
        # The holder of the stale lock this one replaced, if any.
        self.took_over = took_over
        self._file: TextIO | None = f
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name="golfjax-workdir-lock", daemon=True)
        self._heartbeat.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(OSError):  # A file system hiccup: try again next beat.
                os.utime(self.path)

    def release(self) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        self._stop.set()
        self._heartbeat.join()
        try:
            # Unlink while still holding the flock: a run that opened the old
            # file meanwhile finds it unlinked after taking the flock, and retries.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()


def acquire(
    workdir: str | os.PathLike[str],
    *,
    report: Callable[[str], None] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
) -> WorkdirLock:
    """Takes `<workdir>/lock` (making `workdir` if needed) or raises `WorkdirLockedError`.

    Args:
      workdir: the run's work directory.
      report: called with one line when a stale lock is taken over
        (default: printed to stderr).
      heartbeat_s: how often the holder refreshes the file.
      stale_after_s: the age from which an unrefreshed file that names
        another host, or a live pid of this host, is stale.
    """
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    me = holder_info()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(f)
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkdirLockedError(
                f"{workdir} is in use by another run: {describe(holder)} holds {path}"
            ) from None
        # The file may have been unlinked (released) between open and flock;
        # then this flock guards nothing and the path is free to take again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            f.close()
            continue
        break
    previous = _read_holder(f)
    if previous is not None:
        # The flock was free: its holder is gone, or on a host whose locks this
        # one does not see.
        age = time.time() - os.fstat(fd).st_mtime
        other_host = previous.get("host") != me["host"]
        may_live = other_host or (previous.get("pid") != me["pid"] and _pid_alive(previous.get("pid")))
        if may_live and age < stale_after_s:
            fcntl.flock(fd, fcntl.LOCK_UN)
            f.close()
            where = "another host" if other_host else "this host, not holding it"
            raise WorkdirLockedError(
                f"{workdir} may be in use by another run: {path} names {describe(previous)}"
                f" on {where}, refreshed {age:.0f} s ago; it is stale once {stale_after_s:.0f} s"
                f" old, or delete it if that run is gone"
            )
        why = f"not refreshed for {age:.0f} s" if may_live else "no longer running"
        report(f"{workdir}: took over a stale lock of {describe(previous)}, {why}")
    f.seek(0)
    f.truncate()
    f.write(json.dumps(me) + "\n")
    f.flush()
    os.fsync(fd)
    return WorkdirLock(path, f, me, previous, heartbeat_s)


def _all_agree(ok: bool) -> bool:
    """Multi-process: process 0's `ok`, broadcast to every process."""
    import jax  # Local: single-process runs never need it here.

    import numpy as np

    from golfjax import process_groups as groups

    return bool(groups.broadcast(np.int32(ok)))


@contextlib.contextmanager
def lock(
    workdir: str | os.PathLike[str],
    *,
    primary: bool | None = None,
    report: Callable[[str], None] | None = None,
) -> Iterator[WorkdirLock | None]:
    """Holds the work directory's lock for the block (see the module docstring).

    Args:
      workdir: the run's work directory.
      primary: whether this process takes the lock (default: process 0). The
        others wait for its outcome and yield None.
      report: as in `acquire`.

    Raises:
      WorkdirLockedError: on process 0, naming the holder; on the others,
        saying that process 0 could not take the lock.
    """
    multi = primary is None
    if primary is None:
        from golfjax import process_groups as groups

        primary = groups.is_primary()
    held: WorkdirLock | None = None
    error: WorkdirLockedError | None = None
    if primary:
        try:
            held = acquire(workdir, report=report)
        except WorkdirLockedError as e:
            error = e
    if multi and not _all_agree(error is None):
        if held is not None:
            held.release()
        raise error or WorkdirLockedError(
            f"process 0 could not lock {os.path.abspath(os.fspath(workdir))}: another run holds it"
        )
    if error is not None:
        raise error
    try:
        yield held
    finally:
        if held is not None:
            held.release()
