"""Tests for golfjax/losses/__init__.py: the registries."""

import inspect

from absl.testing import parameterized

from golfjax import losses


class RegistryTest(parameterized.TestCase):

    def test_losses_table(self):
        self.assertEqual(
            set(losses.LOSSES), {"ppo_clip", "gspo", "cispo", "sapo", "reinforce", "vespo"}
        )
        self.assertEqual(set(losses.OFF_POLICY_LOSSES), {"shaping", "truncated_is"})

    @parameterized.parameters(*losses.LOSSES, *losses.OFF_POLICY_LOSSES)
    def test_common_signature(self, name):
        fn = losses.LOSSES.get(name) or losses.OFF_POLICY_LOSSES[name]
        params = list(inspect.signature(fn).parameters)
        self.assertEqual(
            params,
            ["logp_NxT", "old_logp_NxT", "adv_N", "mask_NxT", "cfg", "sampler_logp_NxT"],
        )
        self.assertTrue(fn.__doc__ and "l_t" in fn.__doc__, f"{name} documents its formula")

    def test_unknown_names_list_the_known_ones(self):
        with self.assertRaisesRegex(ValueError, r"unknown loss 'ppo'; expected one of cispo, gspo"):
            losses.get_loss("ppo")
        with self.assertRaisesRegex(ValueError, r"unknown off-policy loss 'luffy'; expected one of shaping"):
            losses.get_off_policy_loss("luffy")
        self.assertIs(losses.get_loss("vespo"), losses.LOSSES["vespo"])
