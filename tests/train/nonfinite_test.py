"""Tests for golfjax/train/nonfinite.py."""

import pytest

from golfjax.train import nonfinite

SKIPPED = {"train/skipped_nonfinite": 1.0, "loss": float("nan"), "grad_norm": float("nan")}
APPLIED = {"train/skipped_nonfinite": 0.0, "loss": 0.5, "grad_norm": 1.0}


def test_skip_stops_after_more_than_the_allowed_streak():
    guard = nonfinite.NonfiniteGuard("skip", max_consecutive_skips=2)
    guard.check(1, SKIPPED)
    guard.check(2, SKIPPED)
    guard.check(3, APPLIED)  # A finite step ends the streak.
    assert guard.streak == 0
    guard.check(4, SKIPPED)
    guard.check(5, SKIPPED)
    with pytest.raises(FloatingPointError,
                       match=r"train steps 4 to 6: 3 consecutive steps had a non-finite loss, gradient or update"
                             r" and were skipped \(loss=nan, grad_norm=nan at step 6\), more than"
                             r" train.max_consecutive_skips = 2"):
        guard.check(6, SKIPPED)


def test_the_streak_carries_over_a_resume():
    guard = nonfinite.NonfiniteGuard("skip", max_consecutive_skips=2, streak=2)
    with pytest.raises(FloatingPointError, match=r"steps 8 to 10"):
        guard.check(10, SKIPPED)


def test_raise_stops_at_the_first_skipped_step_of_any_phase():
    guard = nonfinite.NonfiniteGuard("raise", max_consecutive_skips=10)
    guard.check(1, {"cold_start/nll": 2.0, "grad_norm": 1.0})  # No skip key: not skipped.
    with pytest.raises(FloatingPointError,
                       match=r"cold start step 2: non-finite loss, gradient or update \(loss=inf, grad_norm=nan\);"
                             r" .* train.nonfinite = 'raise'"):
        guard.check(2, {"train/skipped_nonfinite": 1.0, "cold_start/nll": float("inf"),
                        "grad_norm": float("nan")}, phase="cold start")


def test_bad_settings_name_their_keys():
    with pytest.raises(ValueError, match=r"train.nonfinite='ignore'; expected one of skip, raise"):
        nonfinite.NonfiniteGuard("ignore", 1)
    with pytest.raises(ValueError, match=r"train.max_consecutive_skips=-1; expected >= 0"):
        nonfinite.NonfiniteGuard("skip", -1)
