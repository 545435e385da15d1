"""benchmarks/cold_start_probe.py: its teacher-forced exact match agrees with
what the sampler's greedy decoding writes, an independent code path."""

import importlib.util
import pathlib

import jax
import numpy as np

from golfjax import sampling
from golfjax.data.sft_examples import SFTExample
from golfjax.models import config as config_lib
from golfjax.models import transformer

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "cold_start_probe.py"
_spec = importlib.util.spec_from_file_location("cold_start_probe", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

_PROMPT, _RESPONSE = 8, 6


def _greedy_examples():
    config = config_lib.ModelConfig()
    params = transformer.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.vocab_size, n).tolist() for n in (3, 5, 8, 6)]
    cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=_RESPONSE, group_size=1,
                                  prompt_buckets=(_PROMPT,), batch_buckets=(4,))
    rollout = sampling.generate(params, prompts, jax.random.key(1), cfg, model_config=config)
    responses = [row.tolist() for row in np.asarray(rollout.tokens_NxT)]
    return config, params, [SFTExample(p, r) for p, r in zip(prompts, responses)]


def test_exact_match_is_one_on_greedy_outputs_and_drops_per_changed_response():
    config, params, examples = _greedy_examples()
    assert probe.exact_match(params, config, examples, 0, _PROMPT, _RESPONSE) == 1.0
    # A different token in one response makes that example a miss.
    changed = list(examples)
    response = list(changed[1].response_tokens)
    response[3] = (response[3] + 1) % config.vocab_size
    changed[1] = SFTExample(changed[1].prompt_tokens, response)
    assert probe.exact_match(params, config, changed, 0, _PROMPT, _RESPONSE) == 0.75
    # A shorter target (a prefix) matches on the tokens it has: padding is not scored.
    shorter = list(examples)
    shorter[2] = SFTExample(shorter[2].prompt_tokens, shorter[2].response_tokens[:2])
    assert probe.exact_match(params, config, shorter, 0, _PROMPT, _RESPONSE) == 1.0
