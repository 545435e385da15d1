"""Tests for golfjax/losses/config.py: defaults and validation."""

import dataclasses

from absl.testing import parameterized

from golfjax.losses import LOSSES
from golfjax.losses import OFF_POLICY_LOSSES
from golfjax.losses import LossConfig


class LossConfigTest(parameterized.TestCase):

    def test_defaults_are_those_of_docs_algorithms_md(self):
        cfg = LossConfig()
        self.assertEqual(cfg.agg, "loss-default")
        self.assertEqual((cfg.eps_low, cfg.eps_high, cfg.dual_clip), (0.2, 0.2, 3.0))
        self.assertEqual((cfg.gspo_eps_low, cfg.gspo_eps_high), (3e-4, 4e-4))
        self.assertEqual(cfg.cispo_max_weight, 5.0)
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

    def test_each_loss_default_aggregation(self):
        # GSPO and SAPO: seq-mean-token-mean (verl's compute_policy_loss_gspo
        # and _sapo; TRL's loss_type "grpo" for GSPO and "sapo"); the rest
        # token-mean (verl's default loss_agg_mode, TRL's "dapo" and "cispo").
        expected = {"ppo_clip": "token-mean", "gspo": "seq-mean-token-mean",
                    "cispo": "token-mean", "sapo": "seq-mean-token-mean",
                    "reinforce": "token-mean", "vespo": "token-mean",
                    "shaping": "token-mean", "truncated_is": "token-mean"}
        self.assertEqual(set(expected), set(LOSSES) | set(OFF_POLICY_LOSSES))
        for name, agg in expected.items():
            self.assertEqual(LossConfig().for_loss(name).agg, agg, name)
            # An explicit aggregation is kept whatever the loss.
            explicit = LossConfig(agg="seq-mean-token-sum-norm")
            self.assertIs(explicit.for_loss(name), explicit)

    @parameterized.named_parameters(
        ("negative_eps_low", {"eps_low": -0.1}, r"LossConfig.eps_low=-0.1; expected >= 0"),
        ("negative_eps_high", {"eps_high": -0.2}, r"eps_high=-0.2; expected >= 0"),
        ("eps_low_one", {"eps_low": 1.0}, r"eps_low=1.0; expected < 1"),
        ("nan_eps", {"eps_high": float("nan")}, r"eps_high=nan"),
        ("lambda_zero", {"vespo_lam_pos": 0.0}, r"vespo_lam_pos=0.0; expected >= 1e-4"),
        ("lambda_negative", {"vespo_lam_neg": -1.0}, r"vespo_lam_neg=-1.0"),
        ("negative_k", {"vespo_k_neg": -1.0}, r"vespo_k_neg=-1.0; expected >= 0"),
        ("dual_clip", {"dual_clip": 0.5}, r"dual_clip=0.5; expected > 1 or None"),
        ("agg", {"agg": "sum"}, r"agg='sum'.*seq-mean-token-sum-norm, loss-default"),
        ("cispo_max_weight", {"cispo_max_weight": 0.5}, r"cispo_max_weight=0.5; expected >= 1"),
        ("mis", {"mis": "geometric"}, r"mis='geometric'; expected one of none, token, sequence"),
        ("tau", {"sapo_tau_neg": 0.0}, r"sapo_tau_neg=0.0; expected > 0"),
        ("gamma", {"shaping_gamma": 0.0}, r"shaping_gamma=0.0; expected > 0"),
        ("tis_cap", {"tis_cap": -1.0}, r"tis_cap=-1.0; expected > 0"),
        ("mis_cap", {"mis_cap": 1.0}, r"mis_cap=1.0; expected > 1"),
    )
    def test_invalid_values_name_the_field(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            LossConfig(**kwargs)
