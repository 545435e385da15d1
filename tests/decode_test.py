"""Tests for golfjax/decode.py: the prefill and decode programs and the decode
loops' layout, against expectations worked out by hand.

The programs run a bigram model (tests/bigram_model.py) whose greedy next token
after v is `succ(v)`: v + 1, except 15 -> 8, so a row that starts in 0..5 runs
up to the stop token 6 and one that starts in 8..15 cycles until T tokens.
"""

import functools

import jax
import numpy as np
import pytest

from golfjax import decode
from golfjax.sampling_config import SamplingConfig
from tests import bigram_model

V = bigram_model.V
SUCC = np.array([v + 1 for v in range(V - 1)] + [8])
LM_HEAD = 2.0 * np.eye(V, dtype=np.float32)[SUCC]  # Row v puts 2 on succ(v).
STOP, PAD, G, T = 6, 7, 2, 40


def _prompts():
    """Four prompt slots of 4 tokens, left-padded; the last is a dummy row."""
    tokens_BxP = np.array([[PAD, PAD, 1, 2], [PAD, PAD, PAD, 5], [9, 10, 11, 12],
                           [PAD, PAD, PAD, PAD]], np.int32)
    mask_BxP = tokens_BxP != PAD
    return tokens_BxP, mask_BxP, np.array([True, True, True, False])


@pytest.mark.parametrize("decode_layers", ["unrolled", "scan"])
def test_greedy_rows_stop_pad_and_report_the_temperature_1_logp(decode_layers):
    model = bigram_model.CONFIG.replace(decode_layers=decode_layers)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=T, stop_ids=(STOP,), group_size=G,
                         pad_id=PAD, decode_loops=2)
    assert len(decode.decode_segments(4, T, cfg.decode_loops)) == 2  # The cache grows once.
    per_layer = decode_layers == "unrolled"
    prefill = jax.jit(functools.partial(decode.prefill, model_config=model))
    run = jax.jit(functools.partial(decode.decode, model_config=model, cfg=cfg,
                                    split_layers=per_layer, recent_buffer=per_layer))
    params = bigram_model.params(LM_HEAD)
    tokens_BxP, mask_BxP, valid_B = _prompts()
    cache, logits_BxV, routes = prefill(params, tokens_BxP, mask_BxP)
    assert routes is None  # A dense model routes nothing.
    assert cache.stacked == (decode_layers == "scan")
    out = jax.device_get(run(params, cache, logits_BxV, tokens_BxP, mask_BxP, valid_B,
                             jax.random.PRNGKey(0)))

    # By hand: 2 -> 3 4 5 6 (stop); 5 -> 6 (stop); 12 -> 13 14 15 8 9 ... (T tokens).
    responses = [[3, 4, 5, 6], [6], ([13, 14, 15] + list(range(8, 16)) * 5)[:T]]
    # Greedy reports the untruncated temperature-1 log-prob of its token, the
    # same for every v here: 2c - log(e^(2c) + V - 1), about -0.005 (float32's
    # log-sum-exp of about 8 is good to about 1e-6).
    logp = bigram_model.log_softmax(bigram_model.logits(LM_HEAD, 0))[SUCC[0]]
    for n in range(4 * G):
        b = n // G
        want = responses[b] if valid_B[b] else []
        length = len(want)
        np.testing.assert_array_equal(out.tokens_NxT[n], want + [PAD] * (T - length))
        np.testing.assert_array_equal(out.response_mask_NxT[n], np.arange(T) < length)
        np.testing.assert_allclose(out.behaviour_logp_NxT[n],
                                   np.where(np.arange(T) < length, logp, 0.0), atol=1e-6)
        assert out.length_N[n] == length
        np.testing.assert_array_equal(out.prompt_tokens_NxP[n], tokens_BxP[b])
        np.testing.assert_array_equal(out.prompt_mask_NxP[n], mask_BxP[b])
        assert out.group_id_N[n] == b
    np.testing.assert_array_equal(out.finish_reason_N[:3 * G], [decode.FINISH_STOP] * 4
                                  + [decode.FINISH_LENGTH] * 2)


def test_decode_segments_and_loop_caches_worked_example():
    # P = 8, T = 100, 4 loops: each loop covers max(ceil(100 / 4), 32) = 32
    # steps (a multiple of 8); a loop ending at `slots` slots runs the steps
    # s < slots - P + 1, the last loop's cache holds P + T = 108 slots.
    assert decode.decode_segments(8, 100, 4) == [(33, 40), (65, 72), (97, 104), (100, 108)]
    # Before each loop the cache holds the prompt and the tokens fed so far:
    # P + (the loop's first step) - 1 slots.
    assert decode.loop_caches(8, 100, 4) == [
        (8, 40, 33), (40, 72, 65), (72, 104, 97), (104, 108, 100)]
    # One loop reads all P + T slots from its first step.
    assert decode.decode_segments(8, 100, 1) == [(100, 108)]
