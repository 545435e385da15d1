"""golfjax.sharding: mesh construction, rules, divisibility errors, 8-device model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from golfjax import sharding
from golfjax.models import cache as cache_lib
from golfjax.models import config as config_lib
from golfjax.models import hf
from golfjax.models import transformer
from tests.models import hf_utils


def test_make_mesh_sizes():
    mesh = sharding.make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.make_mesh().shape["fsdp"] == len(jax.devices())
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh(data=3, fsdp=2, tensor=1)
    with pytest.raises(ValueError, match="At most one"):
        sharding.make_mesh(data=-1, fsdp=-1)


def test_logical_to_spec():
    assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim")) == P(
        None, "fsdp", "tensor", None)
    assert sharding.logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'nope' has no sharding rule"):
        sharding.logical_to_spec(("nope",))
    with pytest.raises(ValueError, match="twice"):
        sharding.logical_to_spec(("heads", "mlp"))


def test_rows_follow_the_batch_rule():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.row_sharding(mesh).spec == P(("data", "fsdp"))
    assert sharding.row_shards(mesh) == 4
    # Another rule table moves the rows with it.
    rules = (("batch", "data"),) + tuple(r for r in sharding.LOGICAL_RULES if r[0] != "batch")
    assert sharding.row_sharding(mesh, rules).spec == P("data")
    assert sharding.row_shards(mesh, rules) == 2


def test_indivisible_dimension_names_parameter():
    # 2 kv heads over a tensor axis of 4: the k projection cannot be sharded.
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    config = config_lib.PRESETS["tiny"]
    with pytest.raises(ValueError, match=r"parameter 'layers/attn/k': dimension 2 "
                       r"\('kv_heads'\) of size 2 does not divide mesh axis "
                       r"'tensor' of size 4"):
        transformer.param_shardings(config, mesh)


def _expected_sharding(config, mesh):
    axes = transformer.logical_axes(config)
    return jax.tree.map(
        lambda names: NamedSharding(mesh, sharding.logical_to_spec(names)), axes,
        is_leaf=lambda x: isinstance(x, tuple))


def _assert_shardings(params, expected):
    for (path, leaf), want in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(expected)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (path, leaf.sharding)


def test_init_params_on_mesh_follows_rules():
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    config = config_lib.PRESETS["tiny_qwen2"]
    params = transformer.init_params(config, jax.random.key(0), mesh)
    jax.block_until_ready(params)
    _assert_shardings(params, _expected_sharding(config, mesh))
    assert params["layers"]["attn"]["q"].sharding.spec == P(
        None, "fsdp", "tensor", None)


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_load_on_8_device_mesh_matches_one_device(family, tmp_path):
    hf_utils.make_hf_model(family).save_pretrained(str(tmp_path))
    config, params1 = hf.load(str(tmp_path))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    config8, params8 = hf.load(str(tmp_path), mesh=mesh)
    assert config8 == config
    _assert_shardings(params8, _expected_sharding(config, mesh))
    assert params8["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")

    tokens, positions, mask = hf_utils.left_padded_batch(batch=4, length=12)
    apply = jax.jit(transformer.apply, static_argnames="config")
    ref, _ = apply(params1, tokens, positions, mask, config=config)
    ref = np.asarray(ref)  # Block before the sharded run (CPU collectives).

    batch = NamedSharding(mesh, sharding.logical_to_spec(("batch", None)))
    args = [jax.device_put(jnp.asarray(x), batch) for x in (tokens, positions, mask)]
    logits, _ = apply(params8, *args, config=config)
    np.testing.assert_allclose(np.asarray(logits)[mask], ref[mask], atol=1e-5)

    # Incremental decoding with a sharded cache agrees too.
    cache = jax.device_put(cache_lib.init_cache(config, 4, 12),
                           cache_lib.cache_shardings(config, 4, 12, mesh))
    step, _ = apply(params8, args[0][:, :8], args[1][:, :8], args[2], cache,
                    config=config)
    np.testing.assert_allclose(np.asarray(step)[mask[:, :8]],
                               ref[:, :8][mask[:, :8]], atol=1e-5)
