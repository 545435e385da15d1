"""The sampler on Qwen 3 MoE policies: parity with transformers, recorded
routes, 8 devices, the decode roofline and the compiled programs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import programs
from golfjax import decode
from golfjax import sampling
from golfjax import sharding as sharding_lib
from golfjax.models import config as config_lib
from golfjax.models import hf
from golfjax.models import transformer
from tests.models import hf_utils

PROMPTS = [[5, 17, 42, 9, 77, 3, 101], [64, 2], [11, 90, 33, 8, 120]]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    """transformers' tiny Qwen3MoeForCausalLM (layer 0 sparse, layer 1 dense)."""
    model = hf_utils.make_hf_model("qwen3_moe")
    path = str(tmp_path_factory.mktemp("qwen3_moe"))
    model.save_pretrained(path)
    return (model, *hf.load(path))


def _cfg(**overrides) -> sampling.SamplingConfig:
    defaults = dict(temperature=0.0, max_new_tokens=NEW_TOKENS, group_size=1,
                    prompt_buckets=(8, 16), batch_buckets=(4, 8))
    return sampling.SamplingConfig(**(defaults | overrides))


def _generate(params, config, cfg, key=0, **kwargs):
    rollout = sampling.generate(params, PROMPTS, jax.random.key(key), cfg, model_config=config,
                                **kwargs)
    return jax.tree.map(np.asarray, jax.block_until_ready(rollout))


def _teacher_forced(config, params, r):
    """One forward pass over [prompt; response]: the log-prob of every response
    token and the (sorted) experts of every prompt and response token."""
    tokens = np.concatenate([r.prompt_tokens_NxP, r.tokens_NxT], axis=1)
    mask = np.concatenate([r.prompt_mask_NxP, r.response_mask_NxT], axis=1)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    h, _, routing = jax.jit(transformer.hidden_routed, static_argnames="config")(
        params, tokens, positions, mask, config=config)
    logits = transformer.unembed(params, h, config=config)
    p = r.prompt_tokens_NxP.shape[1]
    logp = np.asarray(jax.nn.log_softmax(logits[:, p - 1:-1], axis=-1))
    logp = np.take_along_axis(logp, r.tokens_NxT[..., None], axis=-1)[..., 0]
    ids = np.sort(np.asarray(routing.ids_NxQxLxA), axis=-1)
    return logp, ids[:, :p], ids[:, p:]


def _assert_routes_recorded(config, params, r):
    _, prompt_ids, response_ids = _teacher_forced(config, params, r)
    recorded = np.asarray(decode.recorded_routes(r.response_mask_NxT))
    assert recorded.sum() == r.response_mask_NxT.sum() - len(recorded)
    np.testing.assert_array_equal(np.sort(r.prompt_routes_NxPxLxA, -1)[r.prompt_mask_NxP],
                                  prompt_ids[r.prompt_mask_NxP])
    np.testing.assert_array_equal(np.sort(r.routes_NxTxLxA, -1)[recorded],
                                  response_ids[recorded])


@pytest.mark.parametrize("decode_layers", ["auto", "scan"])
def test_greedy_equals_transformers_generate_and_routes_are_recorded(moe_model,
                                                                      decode_layers):
    model, config, params = moe_model
    config = config.replace(decode_layers=decode_layers)
    r = _generate(params, config, _cfg())
    np.testing.assert_array_equal(r.tokens_NxT, hf_utils.greedy(model, PROMPTS, NEW_TOKENS))
    assert r.routes_NxTxLxA.shape == (3, NEW_TOKENS, 1, 2)  # One MoE layer, 2 experts.
    assert r.routes_NxTxLxA.dtype == np.uint8
    _assert_routes_recorded(config, params, r)
    np.testing.assert_allclose(r.behaviour_logp_NxT, _teacher_forced(config, params, r)[0],
                               atol=1e-5, rtol=0)


def test_sampling_on_8_devices_equals_one_device(moe_model):
    # Rows over data x fsdp, experts over fsdp, their width over tensor.
    _, config, params = moe_model
    dims = (2, 2, 2)
    mesh = sharding_lib.make_mesh(*dims)
    cfg = _cfg(temperature=1.0, group_size=2)
    single = _generate(params, config, cfg, key=5)
    placed = jax.device_put(params, transformer.param_shardings(config, mesh))
    # The experts are split over fsdp: each device holds 8 / fsdp of them.
    gate = placed["layers"]["moe"]["gate"]
    assert gate.sharding.shard_shape(gate.shape)[1] == 8 // dims[1]
    sharded = _generate(placed, config, cfg, key=5, mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens_NxT, single.tokens_NxT)
    recorded = np.asarray(decode.recorded_routes(single.response_mask_NxT))
    np.testing.assert_array_equal(sharded.routes_NxTxLxA[recorded],
                                  single.routes_NxTxLxA[recorded])
    np.testing.assert_allclose(sharded.behaviour_logp_NxT, single.behaviour_logp_NxT, atol=1e-5)


def test_decode_roofline_reads_only_the_experts_rows_reach():
    config = config_lib.PRESETS["qwen3-30b-a3b"]
    expert_bytes = 3 * config.embed_dim * config.moe_mlp_dim * 2  # bf16
    dense = config.replace(num_experts=128, experts_per_token=128)  # Every expert read.
    for rows, active in ((1, 8), (4, 32), (16, 128), (64, 128)):
        idle = (128 - active) * len(config.moe_layers) * expert_bytes
        assert sampling.decode_bytes_per_step(config, rows, 100) == pytest.approx(
            sampling.decode_bytes_per_step(dense, rows, 100) - idle)
    assert sampling.decode_bytes_per_step(config, 64, 100, active_experts=100) < (
        sampling.decode_bytes_per_step(config, 64, 100))


def test_moe_train_and_decode_programs_compile_abstractly():
    # The builders benchmarks/programs.py (and the AOT tool) lower from shapes.
    config = config_lib.PRESETS["tiny_qwen3_moe"].replace(routing_replay="rollout")
    _, train = programs.train_step_program(config, rows=4, prompt=8, response=24)
    assert train["flops"] > 0
    _, step = programs.decode_step_program(config, rows=4, prompt=8, new_tokens=40)
    assert step["roofline_bytes"] == sampling.decode_bytes_per_step(config, 4, step["slots"])
