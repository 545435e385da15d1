"""Tests for golfjax/losses/config.py: defaults and validation."""

import dataclasses

from absl.testing import parameterized

from golfjax.losses import LossConfig


class LossConfigTest(parameterized.TestCase):

    def test_defaults_are_those_of_algorithms_md(self):
        cfg = LossConfig()
        self.assertEqual(cfg.agg, "token-mean")
        self.assertEqual((cfg.eps_low, cfg.eps_high, cfg.dual_clip), (0.2, 0.2, 3.0))
        self.assertEqual(
            (cfg.vespo_k_pos, cfg.vespo_lam_pos, cfg.vespo_k_neg, cfg.vespo_lam_neg),
            (2.0, 3.0, 3.0, 2.0),
        )
        self.assertEqual((cfg.sapo_tau_pos, cfg.sapo_tau_neg), (1.0, 1.05))
        self.assertEqual((cfg.tis, cfg.tis_cap, cfg.mis, cfg.mis_cap), (False, 2.0, "none", 2.0))
        self.assertEqual(cfg.shaping_gamma, 0.1)
        # Frozen and hashable, so it can be a static argument of jit.
        hash(cfg)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            cfg.agg = "seq-mean-token-sum"

    @parameterized.named_parameters(
        ("negative_eps_low", {"eps_low": -0.1}, r"LossConfig.eps_low=-0.1; expected >= 0"),
        ("negative_eps_high", {"eps_high": -0.2}, r"eps_high=-0.2; expected >= 0"),
        ("eps_low_one", {"eps_low": 1.0}, r"eps_low=1.0; expected < 1"),
        ("nan_eps", {"eps_high": float("nan")}, r"eps_high=nan"),
        ("lambda_zero", {"vespo_lam_pos": 0.0}, r"vespo_lam_pos=0.0; expected >= 1e-4"),
        ("lambda_negative", {"vespo_lam_neg": -1.0}, r"vespo_lam_neg=-1.0"),
        ("negative_k", {"vespo_k_neg": -1.0}, r"vespo_k_neg=-1.0; expected >= 0"),
        ("dual_clip", {"dual_clip": 0.5}, r"dual_clip=0.5; expected > 1 or None"),
        ("agg", {"agg": "sum"}, r"agg='sum'.*seq-mean-token-sum-norm"),
        ("mis", {"mis": "geometric"}, r"mis='geometric'; expected one of none, token, sequence"),
        ("tau", {"sapo_tau_neg": 0.0}, r"sapo_tau_neg=0.0; expected > 0"),
        ("gamma", {"shaping_gamma": 0.0}, r"shaping_gamma=0.0; expected > 0"),
        ("tis_cap", {"tis_cap": -1.0}, r"tis_cap=-1.0; expected > 0"),
        ("mis_cap", {"mis_cap": 1.0}, r"mis_cap=1.0; expected > 1"),
    )
    def test_invalid_values_name_the_field(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            LossConfig(**kwargs)
