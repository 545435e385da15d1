"""golfjax/aot/work.py: the flop counts agree with XLA's where XLA counts everything.

XLA's cost analysis counts a loop body once, so the comparison uses programs
whose loops run once: one layer, one micro-batch, one log-prob chunk.
"""

import numpy as np
import pytest

from benchmarks import programs
from golfjax.aot import work
from golfjax.models.config import ModelConfig

ONE_LAYER = ModelConfig(family="llama3", vocab_size=512, embed_dim=256, num_layers=1, num_heads=4,
                        num_kv_heads=2, head_dim=64, mlp_dim=1024)
ONE_DEVICE = work.Mesh(devices=1, row_shards=1, tensor=1)


def test_train_step_flops_match_xla_on_a_one_pass_program():
    rows, prompt, response = 8, 64, 64
    _, stats = programs.train_step_program(ONE_LAYER, rows, prompt, response, logp_chunk=response)
    estimate = work.train_step(ONE_LAYER, [(rows, prompt)], response, 1, ONE_DEVICE)
    # Matmuls and attention are counted; elementwise work and the causal
    # half of the reference attention's scores are not.
    assert stats["flops"] == pytest.approx(estimate.flops, rel=0.05)


def test_decode_step_flops_match_xla():
    rows, prompt, new_tokens = 16, 128, 64
    _, stats = programs.decode_step_program(ONE_LAYER, rows, prompt, new_tokens)
    estimate = work.decode_step(ONE_LAYER, rows, stats["slots"], ONE_DEVICE)
    assert stats["flops"] == pytest.approx(estimate.flops, rel=0.05)


def test_work_divides_over_devices_and_decode_sums_its_loops():
    c = ONE_LAYER.replace(num_layers=4)
    eight = work.Mesh(devices=8, row_shards=8, tensor=1)
    one = work.train_step(c, [(64, 128)], 128, 4, ONE_DEVICE)
    split = work.train_step(c, [(64, 128)], 128, 4, eight)
    assert split.flops == pytest.approx(one.flops / 8)
    # Every decode step of a call: T - 1 steps after the prefill's token.
    prompt, new_tokens = 64, 200
    total = work.decode_program(c, 32, prompt, new_tokens, 4, ONE_DEVICE)
    per_step = [work.decode_step(c, 32, slots, ONE_DEVICE).flops for slots in range(prompt, prompt + new_tokens)]
    assert np.min(per_step) * (new_tokens - 1) < total.flops < np.max(per_step) * (new_tokens - 1)
    assert work.Work(2.0, 10.0).seconds(1.0, 5.0) == 2.0
    assert work.Work(2.0, 10.0).seconds(4.0, 5.0) == 2.0
    assert work.Work(1.0, 2.0) + work.Work(3.0, 4.0) == work.Work(4.0, 6.0)
