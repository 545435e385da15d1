"""Tests for golfjax/train/workdir.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from golfjax.train import workdir as workdir_lib


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(workdir, **holder):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": 1, "started": "then", **holder}, f)


def test_the_lock_names_its_holder_and_a_second_taker_fails_at_once(tmp_path):
    held = workdir_lib.acquire(tmp_path)
    holder = json.loads((tmp_path / "lock").read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    assert held.took_over is None
    with pytest.raises(workdir_lib.WorkdirLockedError,
                       match=rf"in use by another run: pid {os.getpid()} on host {socket.gethostname()}"):
        workdir_lib.acquire(tmp_path)
    held.release()
    held.release()  # Idempotent.
    assert not (tmp_path / "lock").exists()
    workdir_lib.acquire(tmp_path).release()


def test_the_context_releases_on_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with workdir_lib.lock(tmp_path) as held:
            assert held is not None and (tmp_path / "lock").exists()
            raise KeyError("boom")
    assert not (tmp_path / "lock").exists()
    with workdir_lib.lock(tmp_path):
        pass


def test_a_lock_held_by_another_process_is_refused_until_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {os.getcwd()!r})
            from golfjax.train import workdir
            workdir.acquire({str(tmp_path)!r})
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirLockedError, match=rf"pid {holder.pid} on host"):
            workdir_lib.acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # Dies holding the lock: no release.
        holder.wait()
        holder.stdout.close()
    reports = []
    held = workdir_lib.acquire(tmp_path, report=reports.append)
    assert held.took_over["pid"] == holder.pid
    assert reports == [f"{tmp_path}: took over a stale lock of pid {holder.pid} on host"
                       f" {socket.gethostname()} (since {held.took_over['started']}), no longer running"]
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    held.release()


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    reports = []
    with workdir_lib.lock(tmp_path, report=reports.append):
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert len(reports) == 1 and f"stale lock of pid {pid}" in reports[0]


def test_a_fresh_lock_file_naming_a_live_process_or_another_host_is_not_taken_over(tmp_path):
    # The flock is free, but the named process runs (a reused pid, or a file
    # system without flock): refuse while the file is fresh.
    _write_lock(tmp_path, pid=os.getppid())
    with pytest.raises(workdir_lib.WorkdirLockedError,
                       match=rf"names pid {os.getppid()} .* on this host, not holding it, refreshed \d+ s"
                             rf" ago; it is stale once 600 s old, or delete it if that run is gone"):
        workdir_lib.acquire(tmp_path)
    _write_lock(tmp_path, host="elsewhere", pid=_dead_pid())
    with pytest.raises(workdir_lib.WorkdirLockedError, match=r"on host elsewhere .* on another host"):
        workdir_lib.acquire(tmp_path)
    assert json.loads((tmp_path / "lock").read_text())["host"] == "elsewhere"  # Untouched.


def test_a_lock_file_of_another_host_not_refreshed_for_long_is_stale(tmp_path):
    _write_lock(tmp_path, host="elsewhere", pid=7)
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "lock", (an_hour_ago, an_hour_ago))
    reports = []
    with workdir_lib.lock(tmp_path, report=reports.append) as held:
        assert held.took_over["host"] == "elsewhere"
    assert reports == [f"{tmp_path}: took over a stale lock of pid 7 on host elsewhere (since then),"
                       " not refreshed for 3600 s"]


def test_the_holder_refreshes_the_lock_file(tmp_path):
    held = workdir_lib.acquire(tmp_path, heartbeat_s=0.05)
    long_ago = time.time() - 3600
    os.utime(tmp_path / "lock", (long_ago, long_ago))
    deadline = time.time() + 10
    while os.stat(tmp_path / "lock").st_mtime < time.time() - 60:
        assert time.time() < deadline, "the lock file was not refreshed"
        time.sleep(0.05)
    held.release()
    assert not (tmp_path / "lock").exists()


def test_an_empty_or_garbled_lock_file_without_a_holder_is_taken(tmp_path):
    (tmp_path / "lock").write_text('{"host": "x", "pi')  # Torn by a crash mid-write.
    with workdir_lib.lock(tmp_path) as held:
        assert held.took_over is None


def test_only_the_primary_process_takes_the_lock(tmp_path):
    with workdir_lib.lock(tmp_path, primary=False) as held:
        assert held is None
        assert not (tmp_path / "lock").exists()
