"""Starting a two-process JAX job on this machine (CPU, two devices a process), for tests."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_experiment(args, workdir, logs, timeout=900):
    """Runs experiments.main as both processes of a two-process CPU job (two devices each).

    Returns each process's stdout. If one fails, the other (which would wait in
    a collective for its peer) is killed, and the failure's stderr is shown.
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    processes, files = [], []
    for i in range(2):
        out, err = open(logs / f"{i}.out", "w+"), open(logs / f"{i}.err", "w+")
        files += [out, err]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", "--multihost=on",
             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
             *args],
            cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
        ))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            failed = any(p.poll() not in (None, 0) for p in processes)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in files:
            f.close()
    for i, p in enumerate(processes):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{(logs / f'{i}.err').read_text()[-4000:]}"
    return [(logs / f"{i}.out").read_text() for i in range(2)]
