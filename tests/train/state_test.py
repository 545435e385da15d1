"""Tests for golfjax/train/state.py: the optimizer chain and TrainState."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

from golfjax.train import state as state_lib


def _params():
    # The shapes of a 2-layer stacked model: norm scales are 2-D here.
    return {
        "embed": {"embedding": jnp.ones((8, 4))},
        "layers": {
            "attn_norm": {"scale": jnp.ones((2, 4))},
            "attn": {"q": jnp.ones((2, 4, 2, 2)), "q_bias": jnp.ones((2, 2, 2))},
        },
        "final_norm": {"scale": jnp.ones((4,))},
    }


class OptimizerTest(parameterized.TestCase):

    def test_decay_mask_skips_norms_and_biases_by_name(self):
        mask = state_lib.decay_mask(_params())
        self.assertEqual(
            mask,
            {
                "embed": {"embedding": True},
                "layers": {"attn_norm": {"scale": False}, "attn": {"q": True, "q_bias": False}},
                "final_norm": {"scale": False},
            },
        )

    def test_weight_decay_applies_only_where_masked(self):
        # Zero gradients: Adam's update is 0, so the only change is decoupled
        # decay, p <- p - lr * wd * p = 1 - 0.1 * 0.5 = 0.95 where it applies.
        cfg = state_lib.OptimizerConfig(lr=0.1, weight_decay=0.5, grad_clip=None)
        tx = state_lib.make_optimizer(cfg)
        params = _params()
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["embed"]["embedding"], 0.95, rtol=1e-6)
        np.testing.assert_allclose(new["layers"]["attn"]["q"], 0.95, rtol=1e-6)
        np.testing.assert_array_equal(new["layers"]["attn_norm"]["scale"], 1.0)
        np.testing.assert_array_equal(new["layers"]["attn"]["q_bias"], 1.0)
        np.testing.assert_array_equal(new["final_norm"]["scale"], 1.0)

    def test_global_norm_clipping(self):
        # Gradient (3, 4) has norm 5; clipped to norm 1 it is (0.6, 0.8). Adam's
        # first step is invariant to a common scale, so compare the clip alone.
        cfg = state_lib.OptimizerConfig(lr=1.0, weight_decay=0.0, grad_clip=1.0)
        tx = state_lib.make_optimizer(cfg)
        clip_state, _ = tx.init({"w": jnp.zeros(2)})
        clipped, _ = optax.clip_by_global_norm(1.0).update({"w": jnp.array([3.0, 4.0])}, clip_state)
        np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
        self.assertLen(tx.init({"w": jnp.zeros(2)}), 2)  # clip, then AdamW

    def test_schedules(self):
        warm = state_lib.make_schedule(state_lib.OptimizerConfig(lr=1.0, warmup_steps=4))
        np.testing.assert_allclose([warm(s) for s in (0, 2, 4, 100)], [0.0, 0.5, 1.0, 1.0])
        cosine = state_lib.make_schedule(
            state_lib.OptimizerConfig(
                lr=1.0, warmup_steps=2, schedule="cosine", total_steps=13, min_lr_ratio=0.1
            )
        )
        # Updates 2 to 12 decay over 10 counts, the last (12) at the floor; halfway:
        # 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55.
        np.testing.assert_allclose([cosine(2), cosine(7), cosine(12)], [1.0, 0.55, 0.1], rtol=1e-5)
        with self.assertRaisesRegex(ValueError, r"total_steps=0; the cosine schedule needs its horizon"):
            state_lib.make_schedule(state_lib.OptimizerConfig(schedule="cosine"))

    @parameterized.named_parameters(
        ("lr", {"lr": 0.0}, r"OptimizerConfig.lr=0.0; expected a finite number > 0"),
        ("lr_inf", {"lr": float("inf")}, r"OptimizerConfig.lr=inf; expected a finite number > 0"),
        ("schedule", {"schedule": "linear"}, r"schedule='linear'; expected one of constant, cosine"),
        ("clip", {"grad_clip": -1.0}, r"grad_clip=-1.0; expected a finite number > 0 or None"),
        ("b2", {"b2": 1.0}, r"b2=1.0; expected in \[0, 1\)"),
        ("warmup", {"warmup_steps": -3}, r"warmup_steps=-3; expected >= 0"),
    )
    def test_invalid_config_names_the_field(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            state_lib.OptimizerConfig(**kwargs)

    def test_train_state_is_a_pytree(self):
        tx = state_lib.make_optimizer(state_lib.OptimizerConfig())
        state = jax.jit(lambda p: state_lib.init_train_state(p, tx, seed=3))(_params())
        self.assertEqual(int(state.step), 0)
        self.assertEqual(state.rng.dtype, jnp.uint32)
        leaves = jax.tree.leaves(state)
        self.assertGreater(len(leaves), 5)
        moved = jax.tree.map(lambda x: x, state.replace(step=state.step + 1))
        self.assertEqual(int(moved.step), 1)
