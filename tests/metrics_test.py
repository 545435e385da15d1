"""Tests for golfjax/metrics.py."""

import io
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import metrics as metrics_lib


def test_jsonl_tensorboard_and_console(tmp_path):
    console = io.StringIO()
    writer = metrics_lib.MetricsWriter(tmp_path, total_steps=10, console=console)
    writer.write(1, {"reward/mean": jnp.float32(0.25), "loss": np.float64(1.5)})
    writer.write(2, {"reward/mean": 0.5, "loss": float("nan")})
    writer.close()
    assert metrics_lib.read_metrics(tmp_path) == [
        {"step": 1, "reward/mean": 0.25, "loss": 1.5},
        {"step": 2, "reward/mean": 0.5, "loss": "nan"},
    ]
    assert "step 1/10 | reward 0.25 | loss 1.5" in console.getvalue()
    events = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


def _read_events(directory):
    """Decodes TFRecord framing (u64 length, u32 crc, data, u32 crc) by hand."""
    from tensorboardX.proto import event_pb2

    (name,) = os.listdir(directory)
    data = (directory / name).read_bytes()
    events, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[offset + 12 : offset + 12 + length])
        events.append(event)
        offset += 12 + length + 4
    return events


def test_tensorboard_events_hold_the_scalars(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, console=None)
    for step in range(3):
        writer.write(step, {"reward/mean": step / 2})
    writer.close()
    scalars = [
        (event.step, value.tag, value.simple_value)
        for event in _read_events(tmp_path / "tensorboard")
        for value in event.summary.value
    ]
    assert scalars == [(0, "reward/mean", 0.0), (1, "reward/mean", 0.5), (2, "reward/mean", 1.0)]


def test_resume_truncates_records_after_the_checkpoint(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=None)
    for step in range(1, 6):
        writer.write(step, {"loss": step})
    writer.close()
    # The run is restored from step 3: records 4 and 5 will be written again.
    writer = metrics_lib.MetricsWriter(
        tmp_path, tensorboard=False, console=None, resume_from_step=3
    )
    writer.write(4, {"loss": 40})
    writer.close()
    assert [(r["step"], r["loss"]) for r in metrics_lib.read_metrics(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)
    ]


def test_non_scalar_metric_is_an_error(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=None)
    with pytest.raises(ValueError, match=r"metric 'loss' has shape \(2,\); expected a scalar"):
        writer.write(0, {"loss": jnp.zeros(2)})
    writer.close()


def _steps(path):
    return [r["step"] for r in metrics_lib.read_metrics(path)]


def test_a_fresh_run_keeps_nothing_of_an_earlier_file(tmp_path):
    # A run killed before its first checkpoint wrote steps 0-2; started again
    # from scratch it writes them again, and each must appear once.
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=None)
    for step in range(3):
        writer.write(step, {"loss": step})
    writer.close()
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=None)
    for step in range(4):
        writer.write(step, {"loss": 10 + step})
    writer.close()
    assert [(r["step"], r["loss"]) for r in metrics_lib.read_metrics(tmp_path)] == [
        (0, 10.0), (1, 11.0), (2, 12.0), (3, 13.0)]


def test_a_torn_last_line_is_dropped_by_the_reader_and_the_resuming_writer(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    assert _steps(tmp_path) == [1, 2]
    console = io.StringIO()
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=console, resume_from_step=2)
    writer.write(3, {"loss": 3})
    writer.close()
    assert "dropped 1 unreadable line(s)" in console.getvalue()
    assert _steps(tmp_path) == [1, 2, 3]
    assert path.read_text().endswith('"loss": 3.0}\n')


def test_an_unreadable_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a JSON record of a step"):
        metrics_lib.read_metrics(tmp_path)


def test_resume_keeps_one_record_per_step_in_step_order(tmp_path):
    # What an older version left after a crash before its first checkpoint:
    # steps 0-2 twice; a complete last record without its newline.
    (tmp_path / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "run": 1}}\n' for s in range(3))
        + "".join(f'{{"step": {s}, "run": 2}}\n' for s in range(5))[:-1])
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console=None, resume_from_step=3)
    writer.write(4, {"run": 3})
    writer.close()
    assert [(r["step"], r["run"]) for r in metrics_lib.read_metrics(tmp_path)] == [
        (0, 2), (1, 2), (2, 2), (3, 2), (4, 3.0)]


def test_resume_tells_tensorboard_to_purge_the_later_steps(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, console=None, resume_from_step=3)
    writer.write(4, {"loss": 1.0})
    writer.close()
    events = _read_events(tmp_path / "tensorboard")
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [4]  # TensorBoard drops the events of steps >= 4 written before.
