"""golfjax/models/attention.py: every implementation equals the definition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax.models import attention, config as config_lib, transformer


def _inputs(seed, b, t, s, k, g, h, dtype, left_padded=False):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, k, g, h)), dtype)
    keys = jnp.asarray(rng.standard_normal((b, s, k, h)), dtype)
    values = jnp.asarray(rng.standard_normal((b, s, k, h)), dtype)
    if left_padded:
        mask = np.arange(s)[None, :] >= rng.integers(0, s // 2, b)[:, None]
    else:
        mask = rng.random((b, s)) < 0.6
    return q, keys, values, jnp.asarray(mask)


def _visible_rows(mask, t, offset):
    """[B, T] True where the query sees at least one key (the rows compared)."""
    mask = np.asarray(mask)
    return np.stack([[mask[b, :offset + i + 1].any() for i in range(t)]
                     for b in range(mask.shape[0])])


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("t,s,offset,block_q,block_k", [
    (37, 37, 0, 8, 5),      # Ragged blocks, self-attention.
    (9, 30, 21, 4, 8),      # A cache: queries start at slot 21.
    (16, 16, 0, 16, 16),    # One block each.
])
def test_blockwise_equals_reference_values_and_gradients(dtype, atol, t, s, offset,
                                                          block_q, block_k):
    q, keys, values, mask = _inputs(0, 3, t, s, 2, 3, 16, dtype)
    visible = _visible_rows(mask, t, offset)
    rng = np.random.default_rng(1)
    # Rows without a visible key carry garbage: no cotangent flows into them.
    cotangent = rng.standard_normal(q.shape) * visible[:, :, None, None, None]

    def loss(fn, *args):
        return jnp.sum(fn(*args, mask, offset).astype(jnp.float32) * cotangent)

    blockwise = lambda *a: attention.blockwise_attention(*a, block_q=block_q,
                                                         block_k=block_k)
    ref = attention.reference_attention(q, keys, values, mask, offset)
    out = jax.jit(blockwise)(q, keys, values, mask, offset)
    np.testing.assert_allclose(np.asarray(out, np.float32)[visible],
                               np.asarray(ref, np.float32)[visible], atol=atol)
    grads_ref = jax.grad(lambda *a: loss(attention.reference_attention, *a),
                         argnums=(0, 1, 2))(q, keys, values)
    grads = jax.jit(jax.grad(lambda *a: loss(blockwise, *a), argnums=(0, 1, 2)))(
        q, keys, values)
    for name, got, want in zip("qkv", grads, grads_ref):
        assert got.dtype == want.dtype, name
        scale = float(np.abs(np.asarray(want, np.float32)).max())
        np.testing.assert_allclose(np.asarray(got, np.float32),
                                   np.asarray(want, np.float32),
                                   atol=atol * max(scale, 1.0), err_msg=name)


def test_blockwise_is_finite_on_rows_without_keys():
    q, keys, values, mask = _inputs(2, 2, 12, 12, 1, 2, 8, jnp.float32)
    mask = mask.at[0].set(False)  # Row 0 sees nothing at all.
    out, vjp = jax.vjp(lambda *a: attention.blockwise_attention(
        *a, mask, block_q=4, block_k=4), q, keys, values)
    assert np.isfinite(np.asarray(out)).all()
    assert all(np.isfinite(np.asarray(g)).all() for g in vjp(jnp.ones_like(out)))


def test_blockwise_memory_does_not_hold_the_scores():
    # Compiled temp memory of forward + backward stays far below one float32
    # B x K x M x S score tensor (what the reference materialises).
    b, t, k, g, h = 1, 2048, 1, 4, 32
    args = (jax.ShapeDtypeStruct((b, t, k, g, h), jnp.float32),
            jax.ShapeDtypeStruct((b, t, k, h), jnp.float32),
            jax.ShapeDtypeStruct((b, t, k, h), jnp.float32))
    mask = jax.ShapeDtypeStruct((b, t), jnp.bool_)

    def grad_of(fn):
        return jax.jit(jax.grad(lambda q, kk, v, m: jnp.sum(fn(q, kk, v, m)),
                                argnums=(0, 1, 2))).lower(*args, mask).compile()

    scores_bytes = b * k * g * t * t * 4
    blockwise = grad_of(lambda *a: attention.blockwise_attention(
        *a, block_q=128, block_k=128)).memory_analysis().temp_size_in_bytes
    reference = grad_of(attention.reference_attention).memory_analysis(
    ).temp_size_in_bytes
    assert reference >= scores_bytes
    assert blockwise < scores_bytes / 8, (blockwise, scores_bytes)


def test_splash_kernel_in_interpret_mode_equals_reference():
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    q, keys, values, mask = _inputs(3, 2, 128, 128, 2, 2, 64, jnp.float32,
                                    left_padded=True)
    visible = _visible_rows(mask, 128, 0)
    ref = attention.reference_attention(q, keys, values, mask)
    out = attention.splash_attention(q, keys, values, mask, interpret=True)
    np.testing.assert_allclose(np.asarray(out)[visible], np.asarray(ref)[visible],
                               atol=2e-5)


def test_auto_picks_by_platform_and_shape():
    q, keys, _, _ = _inputs(0, 1, 256, 256, 1, 2, 64, jnp.bfloat16)
    assert attention._pick(q, keys, 0, 512, "gpu") == "cudnn"
    assert attention._pick(q, keys, 0, 512, "tpu") == "splash"
    assert attention._pick(q, keys, 0, 512, "cpu") == "reference"
    assert attention._pick(q, keys, 0, 128, "cpu") == "blockwise"
    # A cache offset rules the kernels out.
    assert attention._pick(q, keys, jnp.int32(3), 128, "gpu") == "blockwise"
    with pytest.raises(ValueError, match="implementation 'flash'"):
        attention.attention(q, keys, keys, jnp.ones((1, 256), bool),
                            implementation="flash")
    with pytest.raises(ValueError, match="key_mask_NxS has shape"):
        attention.attention(q, keys, keys, jnp.ones((1, 255), bool))


def test_model_with_blockwise_attention_equals_reference_model():
    base = config_lib.PRESETS["tiny_qwen2"]
    params = transformer.init_params(base, jax.random.key(0))
    rng = np.random.default_rng(0)
    mask = np.arange(40)[None, :] >= np.array([0, 7, 19])[:, None]
    tokens = jnp.asarray(rng.integers(1, base.vocab_size, (3, 40)) * mask)
    positions = jnp.asarray(np.clip(np.cumsum(mask, axis=1) - 1, 0, None))

    def run(config):
        def loss(p):
            logits, _ = transformer.apply(p, tokens, positions, jnp.asarray(mask),
                                          config=config)
            return jnp.where(mask, jax.nn.logsumexp(logits, -1), 0.0).sum(), logits
        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, want), grads_want = run(base.replace(attention="reference"))
    (_, got), grads_got = run(base.replace(attention="blockwise", attention_block=8,
                                           remat=True))
    np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(want)[mask], atol=1e-4)
    for a, b in zip(jax.tree.leaves(grads_got), jax.tree.leaves(grads_want)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_auto_on_gpu_falls_back_to_blockwise_where_cudnn_refuses():
    # No cuDNN on this machine: "auto" for a GPU platform must still attend.
    q, keys, values, mask = _inputs(4, 1, 256, 256, 1, 2, 64, jnp.bfloat16,
                                    left_padded=True)
    visible = _visible_rows(mask, 256, 0)
    out = attention.attention(q, keys, values, mask, platform="gpu", block=64)
    ref = attention.reference_attention(q, keys, values, mask)
    np.testing.assert_allclose(np.asarray(out, np.float32)[visible],
                               np.asarray(ref, np.float32)[visible], atol=3e-2)


def test_splash_lowers_for_tpu_with_its_backward_pass():
    S = jax.ShapeDtypeStruct
    q, kv = S((2, 256, 2, 4, 64), jnp.bfloat16), S((2, 256, 2, 64), jnp.bfloat16)

    def loss(q, k, v, m):
        return jnp.sum(attention.attention(q, k, v, m, implementation="splash")
                       .astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
        q, kv, kv, S((2, 256), jnp.bool_)).lower(lowering_platforms=("tpu",))
    assert "tpu_custom_call" in lowered.as_text()


@pytest.mark.parametrize("dims", [(2, 2, 2), (4, 1, 1)])
def test_splash_splits_rows_and_kv_heads_over_the_mesh(dims):
    # Under `partitioned`, each device runs the kernel on its rows (and kv
    # heads, where the rules shard them); values and gradients stay those of
    # the reference.
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    from golfjax import sharding as sharding_lib
    mesh = sharding_lib.make_mesh(*dims, devices=jax.devices()[:int(np.prod(dims))])
    q, keys, values, mask = _inputs(5, 4, 128, 128, 2, 2, 64, jnp.float32,
                                    left_padded=True)
    visible = jnp.asarray(_visible_rows(mask, 128, 0))[:, :, None, None, None]

    def loss(fn):
        def f(q, k, v, m):
            with attention.partitioned(mesh):
                out = fn(q, k, v, m)
            return jnp.sum(jnp.where(visible, out, 0.0) ** 2)
        return jax.value_and_grad(f, argnums=(0, 1, 2))

    rows = sharding_lib.row_sharding(mesh)
    splash = jax.jit(loss(functools.partial(attention.splash_attention, interpret=True)),
                     in_shardings=(rows,) * 4)
    got, grads_got = splash(q, keys, values, mask)
    want, grads_want = loss(attention.reference_attention)(q, keys, values, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(grads_got, grads_want):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert "manual_computation" in splash.lower(q, keys, values, mask).as_text()


def test_trainer_runs_splash_on_each_devices_rows_and_heads():
    # The train step lowered for TPU on a 2 x 2 x 2 mesh: every kernel call
    # takes one device's share, 8 rows / 4 row shards and 4 query heads / 2.
    from benchmarks import programs
    from golfjax import sharding as sharding_lib
    from golfjax.config import TrainSection
    from golfjax.losses import LossConfig
    from golfjax.train import trainer as trainer_lib
    from golfjax.train.state import OptimizerConfig
    config = config_lib.PRESETS["tiny"].replace(attention="splash")
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    trainer = trainer_lib.Trainer(config, TrainSection(loss="ppo_clip"), LossConfig(),
                                  OptimizerConfig(lr=1e-5), sharding_lib.make_mesh(2, 2, 2))
    batch = programs.abstract_batch(8, 16, 112, trainer.batch_shardings.prompt_tokens_NxP)
    text = trainer.jitted_step(batch).trace(
        trainer.abstract_state, batch, jax.random.key(0)).lower(
        lowering_platforms=("tpu",)).as_text()
    calls = [line for line in text.splitlines() if "tpu_custom_call" in line]
    assert calls and "manual_computation" in text
    # Forward and both backward kernels see [2 rows, 2 heads, 128, 16] queries.
    assert all("tensor<2x2x128x16x" in line for line in calls), calls[0][-300:]
