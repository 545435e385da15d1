"""golfjax/models/moe.py and the Qwen 3 MoE family: the layer against a dense
reference that runs every expert, the grouped-matmul kernels, the balancing
loss and the routing against transformers, expert parallelism on 8 devices."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from golfjax import sharding as sharding_lib
from golfjax.models import attention as attention_lib
from golfjax.models import config as config_lib
from golfjax.models import hf
from golfjax.models import moe
from golfjax.models import platform as platform_lib
from golfjax.models import transformer
from tests.models import hf_utils

CONFIG = config_lib.PRESETS["tiny_qwen3_moe"]


def _layer_inputs(seed: int = 0, n: int = 8, t: int = 5, config=CONFIG):
    rng = np.random.RandomState(seed)
    d, e, f = config.embed_dim, config.num_experts, config.moe_mlp_dim
    arrays = (rng.randn(n, t, d), 0.3 * rng.randn(d, e), 0.2 * rng.randn(e, d, f),
              0.2 * rng.randn(e, d, f), 0.2 * rng.randn(e, f, d))
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _every_expert(x, router, gate, up, down, config, ids=None):
    """The reference: every expert on every token, then the chosen ones kept.

    The top-k set comes from an argsort of the float32 probabilities (not
    `lax.top_k`), or is `ids` (a forced routing).
    """
    probs = jax.nn.softmax(jnp.einsum("ntd,de->nte", x, router), axis=-1)
    if ids is None:
        ids = jnp.argsort(-probs, axis=-1)[..., :config.experts_per_token]
    chosen = jnp.sum(jax.nn.one_hot(ids, config.num_experts), axis=-2)  # N x T x E
    weights = probs * chosen
    if config.norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    h = jax.nn.silu(jnp.einsum("ntd,edf->ntef", x, gate)) * jnp.einsum("ntd,edf->ntef", x, up)
    y = jnp.einsum("ntef,efd->nted", h, down)
    return jnp.einsum("nted,nte->ntd", y, weights)


def _objective(fn):
    """A scalar of a layer's output that weighs every entry differently."""
    def objective(*args):
        y = fn(*args)
        return jnp.sum(jnp.sin(y * jnp.arange(1, y.size + 1).reshape(y.shape) / y.size))
    return objective


@pytest.mark.parametrize("norm", [True, False])
def test_layer_forward_and_backward_equal_every_expert_masked(norm):
    config = CONFIG.replace(norm_topk_prob=norm)
    args = _layer_inputs()
    ours = lambda *a: moe.moe_mlp(*a, config)[0]  # noqa: E731
    ref = functools.partial(_every_expert, config=config)
    np.testing.assert_allclose(jax.jit(ours)(*args), jax.jit(ref)(*args), atol=2e-5, rtol=0)
    grads = jax.jit(jax.grad(_objective(ours), argnums=range(5)))(*args)
    ref_grads = jax.jit(jax.grad(_objective(ref), argnums=range(5)))(*args)
    for name, g, r in zip(("x", "router", "gate", "up", "down"), grads, ref_grads):
        assert float(jnp.abs(r).max()) > 1e-3, name  # Every input has a gradient.
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=0, err_msg=name)


def test_replay_routes_to_the_recorded_experts_with_the_routers_weights():
    x, router, gate, up, down = args = _layer_inputs(1)
    _, stats = moe.moe_mlp(*args, CONFIG)
    own = stats.ids_NxQxA
    # Every token to other experts (its own shifted by one), except token 0.
    forced = (own + 1) % CONFIG.num_experts
    use = jnp.ones(own.shape[:2], bool).at[:, 0].set(False)
    y, replayed_stats = moe.moe_mlp(*args, CONFIG, replay=(forced, use))
    expected_ids = jnp.where(use[..., None], forced, own)
    np.testing.assert_allclose(y, _every_expert(*args, CONFIG, ids=expected_ids),
                               atol=2e-5, rtol=0)
    # The router's own choice is still what the routing reports.
    np.testing.assert_array_equal(replayed_stats.ids_NxQxA, own)
    # Replaying a token's own experts changes nothing.
    same, _ = moe.moe_mlp(*args, CONFIG, replay=(own, jnp.ones_like(use)))
    np.testing.assert_array_equal(same, moe.moe_mlp(*args, CONFIG)[0])


def test_megablox_kernel_in_interpret_mode_equals_ragged_dot():
    rng = np.random.RandomState(0)
    lhs = jnp.asarray(rng.randn(40, 128), jnp.float32)
    rhs = jnp.asarray(rng.randn(4, 128, 256), jnp.float32)
    sizes = jnp.asarray([9, 0, 20, 6], jnp.int32)  # Rows 35-39 in no group.

    def matmul(implementation):
        return functools.partial(moe.grouped_matmul, sizes_E=sizes,
                                 implementation=implementation, interpret=True)

    def grads(fn):
        return jax.grad(lambda l, r: jnp.sum(jnp.cos(fn(l, r))), argnums=(0, 1))(lhs, rhs)

    ragged, megablox = matmul("ragged_dot"), matmul("megablox")
    out = megablox(lhs, rhs)
    np.testing.assert_allclose(out, ragged(lhs, rhs), atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(out[35:], 0)
    for got, want in zip(grads(megablox), grads(ragged)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(grads(megablox)[0][35:], 0)
    # Its backward pass swaps the tiles' roles: features must fill whole tiles.
    with pytest.raises(ValueError, match="features 128 x 96 are not multiples"):
        megablox(lhs, rhs[..., :96])
    # Traced for TPU, "auto" takes the kernel where the tiles fit.
    with platform_lib.compiling_for("tpu"):
        assert moe._pick("auto", 2048, 768) == "megablox"
        assert moe._pick("auto", 64, 32) == "ragged_dot"
    assert moe._pick("auto", 2048, 768) == "ragged_dot"  # This host's CPU.


@pytest.fixture(scope="module")
def hf_moe(tmp_path_factory):
    """transformers' Qwen3MoeForCausalLM (4 layers, every second one sparse,
    top-k weights not renormalised) and golfjax's load of it."""
    model = hf_utils.make_hf_model("qwen3_moe", num_hidden_layers=4, decoder_sparse_step=2,
                                   mlp_only_layers=[], norm_topk_prob=False)
    path = str(tmp_path_factory.mktemp("qwen3_moe_step2"))
    model.save_pretrained(path)
    config, params = hf.load(path)
    return model, config, params


def test_decoder_sparse_step_and_unnormalised_weights_match_transformers(hf_moe):
    model, config, params = hf_moe
    assert config.moe_layers == (1, 3) and not config.norm_topk_prob
    assert [run[0] for run in transformer.layer_runs(config)] == [
        "dense_layers", "layers", "dense_layers", "layers"]
    tokens, positions, mask = hf_utils.left_padded_batch()
    logits, _ = jax.jit(transformer.apply, static_argnames="config")(
        params, tokens, positions, mask, config=config)
    ref = hf_utils.torch_logits(model, tokens, positions, mask)
    np.testing.assert_allclose(np.asarray(logits)[mask], ref[mask], atol=1e-4, rtol=0)


def test_routing_and_balancing_loss_equal_transformers(hf_moe):
    model, config, params = hf_moe
    tokens, positions, mask = hf_utils.left_padded_batch()
    _, _, routing = jax.jit(transformer.hidden_routed, static_argnames="config")(
        params, tokens, positions, mask, config=config)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(positions), output_router_logits=True)
    # The experts of every real token, as transformers' router picks them.
    for layer, logits in enumerate(out.router_logits):
        top = torch.topk(torch.softmax(logits.float(), -1), config.experts_per_token, -1)
        theirs = np.sort(top.indices.numpy().reshape(mask.shape + (-1,)), axis=-1)
        ours = np.sort(np.asarray(routing.ids_NxQxLxA[:, :, layer]), axis=-1)
        np.testing.assert_array_equal(ours[mask], theirs[mask])
    loss = moe.load_balancing_loss(routing, config)
    np.testing.assert_allclose(float(loss), float(out.aux_loss), rtol=1e-5)


def test_hf_config_reads_the_4x_expert_count_key():
    hf_config = hf.config_to_hf(CONFIG)
    del hf_config["num_local_experts"]  # transformers 4.x writes num_experts only.
    assert hf.config_from_hf(hf_config) == CONFIG


@pytest.mark.parametrize("field, value, message", [
    ("num_experts", 0, "num_experts must be > 0 for family 'qwen3_moe'"),
    ("experts_per_token", 9, r"experts_per_token must be in \[1, num_experts=8\]"),
    ("moe_mlp_dim", 0, "moe_mlp_dim must be a positive int"),
    ("mlp_only_layers", (2,), r"mlp_only_layers must be layer indices in \[0, 2\)"),
    ("decoder_sparse_step", 0, "decoder_sparse_step must be >= 1"),
    ("routing_replay", "old", "routing_replay must be one of"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        CONFIG.replace(**{field: value})
    with pytest.raises(ValueError, match="routing_replay='rollout' needs an MoE model"):
        config_lib.PRESETS["tiny_qwen3"].replace(routing_replay="rollout")


def test_remat_model_grads_equal_plain_ones_with_the_balancing_loss():
    config = CONFIG.replace(num_layers=3, mlp_only_layers=(1,))
    params = transformer.init_params(config, jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params
    tokens, positions, mask = hf_utils.left_padded_batch(2, 9)

    def loss(params, config):
        h, _, routing = transformer.hidden_routed(params, tokens, positions, mask,
                                                  config=config)
        return jnp.mean(jnp.sin(h)) + moe.load_balancing_loss(routing, config)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    plain, remat = grad(params, config), grad(params, config.replace(remat=True))
    assert float(jnp.abs(plain["layers"]["moe"]["router"]).max()) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 plain, remat)


@pytest.mark.parametrize("dims", [(1, 8, 1), (2, 2, 2)])
def test_expert_parallel_equals_one_device_and_never_gathers_experts(dims):
    args = _layer_inputs(2)
    fn = jax.value_and_grad(_objective(lambda *a: moe.moe_mlp(*a, CONFIG)[0]),
                            argnums=range(5))
    ref = jax.jit(fn)(*args)
    mesh = sharding_lib.make_mesh(*dims)

    def partitioned(*a):
        with attention_lib.partitioned(mesh):
            return fn(*a)

    def placed(names):
        return jax.sharding.NamedSharding(mesh, sharding_lib.logical_to_spec(names))

    expert = ("expert", "expert_embed", "expert_mlp")
    shardings = (placed(("batch", None, None)), placed(("embed", None)), placed(expert),
                 placed(expert), placed(("expert", "expert_mlp", "expert_embed")))
    args = jax.device_put(args, shardings)
    program = jax.jit(partitioned).lower(*args).compile()
    out = jax.block_until_ready(program(*args))
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
    for g, r in zip(out[1], ref[1]):
        np.testing.assert_allclose(g, r, atol=3e-5, rtol=0)
    # The tokens travel (all-gather, reduce-scatter); the experts do not: no
    # collective's result holds a whole expert weight (8 x 64 x 32 or more).
    hlo = program.as_text()
    assert "reduce-scatter" in hlo
    for shape in re.findall(r"f32\[([\d,]+)\][^\n]*? all-gather\(", hlo):
        assert np.prod([int(s) for s in shape.split(",")]) < 8 * 64 * 32, shape
