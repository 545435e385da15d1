"""One process of multihost_test.py's two-process CPU run (not a test itself).

    python -m tests.experiments.multihost_worker PORT PROCESS_ID WORKDIR

Each process has two CPU devices (XLA_FLAGS, set by the test); together they
form one 4-device mesh. Prints `ok <process id> <primary>` at the end.
"""

from __future__ import annotations

import os
import sys

from experiments import multihost


def main(port: int, process_id: int, workdir: str) -> None:
    # As experiments/main.py does, before anything touches a device.
    assert multihost.initialize("auto", coordinator_address=f"localhost:{port}", num_processes=2,
                                process_id=process_id, environ=os.environ)
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from golfjax import metrics
    from golfjax import sharding
    from golfjax.train import checkpoint

    assert (jax.process_count(), jax.process_index()) == (2, process_id)
    mesh = sharding.make_mesh()  # Every device of both processes.
    assert mesh.devices.size == len(jax.devices()) == 4 and len(jax.local_devices()) == 2

    # Rows split over both processes; each process holds only its own.
    value_8x3 = np.arange(24, dtype=np.float32).reshape(8, 3)
    rows = sharding.logical_to_sharding(("batch", None), mesh, shape=value_8x3.shape)
    w = jax.make_array_from_callback(value_8x3.shape, rows, lambda index: value_8x3[index])
    assert not w.is_fully_addressable
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(w)
    assert float(total) == value_8x3.sum()

    # Orbax: every process writes its shards, process 0 the metadata and JSON.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1)
    ckpt.save(1, {"w": w}, {"position": 3}, {"seed": 0})
    ckpt.wait()
    target = checkpoint.abstract_with_shardings({"w": w}, {"w": rows})
    restored, data = ckpt.restore(target)
    ckpt.close()
    assert data == {"position": 3}
    for shard, original in zip(restored["w"].addressable_shards, w.addressable_shards):
        np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(original.data))

    writer = metrics.MetricsWriter(workdir, total_steps=1, tensorboard=False)
    writer.write(1, {"loss": total})
    writer.close()
    print(f"ok {process_id} {writer.primary}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
