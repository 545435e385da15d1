"""One process of channel_test.py's two-process job (not a test itself).

    python -m tests.parallel.channel_worker PORT PROCESS_ID OUT_JSON

Process 0 is the learner, process 1 the rollout group (two CPU devices each).
The learner publishes weights every SYNC_EVERY of its STEPS steps, each step
taking a rollout and "training" for STEP_S; the rollout side keeps producing
rollouts with the newest weights it has, each taking ROLLOUT_S. Each process
writes what it saw (versions, checksums, timestamps) to OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

STEPS, SYNC_EVERY, STEP_S, ROLLOUT_S = 8, 2, 0.3, 0.2


def main(port: int, process_id: int, out: str) -> None:
    import jax

    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from golfjax.parallel import channel as channel_lib
    from golfjax import process_groups as groups_lib

    groups = groups_lib.ProcessGroups.split(jax.process_count(), rollout_processes=1)
    role = groups.role(jax.process_index())
    groups_lib.enter(groups.members(role))
    assert groups_lib.process_count() == 1 and len(groups_lib.devices()) == 2

    def weights(version: int) -> dict[str, np.ndarray]:
        return {"w": np.full((4, 6), float(version), np.float32), "b": np.arange(3, dtype=np.int32) + version}

    channel = channel_lib.CollectiveChannel(groups, weights(0))
    record: dict = {"role": role, "events": []}
    if role == groups_lib.LEARNER:
        # The learner's parameters are split over its own two devices.
        mesh = Mesh(np.array(groups_lib.devices()), ("fsdp",))
        split = NamedSharding(mesh, PartitionSpec("fsdp"))

        def on_mesh(version: int) -> dict[str, jax.Array]:
            return {k: jax.device_put(v, split if v.ndim == 2 else NamedSharding(mesh, PartitionSpec()))
                    for k, v in weights(version).items()}

        channel.publish(on_mesh(0), 0, note={"start": 0})
        for step in range(STEPS):
            start = time.time()
            item = channel.get()
            got = time.time()
            time.sleep(STEP_S)  # Training.
            record["events"].append({"step": step, "version": item["version"], "checksum": item["checksum"],
                                     "wait": got - start, "train": [got, time.time()]})
            if (step + 1) % SYNC_EVERY == 0:
                channel.publish(on_mesh(step + 1), step + 1, note={"start": step + 1})
        channel.close()
    else:
        try:
            while True:
                params, version = channel.latest()
                note = channel.note["start"]
                start = time.time()
                time.sleep(ROLLOUT_S)  # Generating.
                checksum = float(np.asarray(params["w"]).sum() + np.asarray(params["b"]).sum())
                channel.put({"version": version, "checksum": checksum})
                record["events"].append({"version": version, "note": note,
                                         "produce": [start, time.time()]})
        except channel_lib.ChannelClosed:
            pass
    record["wait_s"] = channel.wait_s
    with open(out, "w") as f:
        json.dump(record, f)
    print("ok", process_id, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
