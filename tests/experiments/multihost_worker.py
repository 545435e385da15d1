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

    # The train loop's host <-> mesh helpers: every process puts the same host
    # array and reads back the whole of a split one.
    put = sharding.host_to_global({"w": value_8x3, "n": np.int32(7)},
                                  {"w": rows, "n": NamedSharding(mesh, PartitionSpec())})
    assert put["w"].sharding == rows and not put["w"].is_fully_addressable
    host = sharding.global_to_host({"w": w, "put": put, "total": total, "local": np.ones(2)})
    np.testing.assert_array_equal(host["w"], value_8x3)
    np.testing.assert_array_equal(host["put"]["w"], value_8x3)
    assert int(host["put"]["n"]) == 7 and float(host["total"]) == value_8x3.sum()
    assert isinstance(host["w"], np.ndarray) and host["local"].tolist() == [1.0, 1.0]
    try:  # Different host values would mix the processes' rows: refused.
        sharding.host_to_global(np.full(4, process_id), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    except AssertionError as e:
        assert "different host arrays" in str(e)
    else:
        raise AssertionError("host_to_global accepted different values on the two processes")

    # Dataset prompts: each process draws from its own shard, and the gathered
    # positions give both processes the same global batch.
    from golfjax.data.char_tokenizer import make_task_tokenizer
    from golfjax.data.pipeline import PromptPipeline
    from golfjax.rewards.base import Problem

    problems = [Problem(id=i, question=f"q{i}?", answer=str(i)) for i in range(12)]
    tokenizer = make_task_tokenizer(os.path.join(workdir, "tokenizer"))  # Both processes write it.
    pipeline = PromptPipeline(problems, tokenizer, batch_size=2, seed=0, max_prompt_tokens=50,
                              gather=True)
    batches = [pipeline.next() for _ in range(3)]  # One epoch: 6 prompts per shard.
    assert all(len(b) == 4 for b in batches)
    assert all({i % 2 for i in b[:2]} == {0} and {i % 2 for i in b[2:]} == {1} for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert sharding.allgather_processes(np.asarray(batches)).tolist() == [batches, batches]

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
