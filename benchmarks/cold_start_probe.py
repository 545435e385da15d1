"""How fast the cold start teaches the task model what GOLF relies on.

GOLF on `arith` works only if, after the supervised cold start, (a) the policy
sometimes solves an RL problem on its own (else GRPO has no signal at all),
and (b) given the `reveal` critique of a failed attempt, it writes the
revealed answer (else no refinement succeeds and nothing is injected). This
script runs the cold start of an experiment config exactly as the train loop
does (golfjax/loops/cold_start.py's batches, the cold start's trainer) and
every `--every` steps measures, teacher-forced on
held-out problems, the share of examples whose every response token is the
model's argmax (what greedy decoding would write):

- `plain_cold_train`: plain prompts of cold-start problems it trains on
  (memorisation);
- `plain_cold`: plain prompts of the cold-start problems (test split);
- `plain_rl`: plain prompts of the RL problems (test split);
- `refine_rl`: refinement prompts of the RL problems, one wrong attempt (a
  borrowed answer) with its critique, as golfjax/data/sft_examples.py builds
  them: the copy GOLF's refinements need.

    python benchmarks/cold_start_probe.py --config=experiments/configs/golf.py:arith \
        --steps 300 --every 50 --out benchmarks/results/cold_start_probe.json

`--set KEY=VALUE` overrides config keys (e.g. `--set cold_start.lr=3e-3`). The
JSON holds the config, every measurement and the wall time.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

# Runnable as `python benchmarks/cold_start_probe.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from launch import jobs  # noqa: E402
from golfjax import config as config_lib  # noqa: E402
from golfjax import components as components_lib  # noqa: E402
from golfjax import metrics as metrics_lib  # noqa: E402
from golfjax.data import sft_examples  # noqa: E402
from golfjax import feedback as feedback_lib  # noqa: E402
from golfjax.feedback import refinement as refinement_lib  # noqa: E402
from golfjax.loops import cold_start as cold_start_lib  # noqa: E402
from golfjax.models import transformer  # noqa: E402


def exact_match(params: Any, model_config: Any, examples: list[Any], pad_id: int,
                prompt_len: int, response_len: int) -> float:
    """Share of `examples` whose every response token is the argmax, teacher-forced."""
    batch = cold_start_lib.sft_batch(examples, prompt_len=prompt_len,
                                     response_len=response_len, pad_id=pad_id)
    tokens = np.concatenate([batch.prompt_tokens_NxP, batch.tokens_NxT], axis=1)
    mask = np.concatenate([batch.prompt_mask_NxP, batch.response_mask_NxT], axis=1)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    logits, _ = _forward(params, jnp.asarray(tokens), jnp.asarray(positions),
                         jnp.asarray(mask), model_config)
    # The logits at position i predict token i + 1: response token t comes from
    # position prompt_len + t - 1.
    predicted = np.asarray(jnp.argmax(logits, axis=-1))[:, prompt_len - 1:-1]
    right = (predicted == batch.tokens_NxT) | ~batch.response_mask_NxT
    return float(np.mean(np.all(right, axis=1)))


@jax.jit(static_argnums=4)
def _forward(params, tokens, positions, mask, model_config):
    return transformer.apply(params, tokens, positions, mask, config=model_config)


def probe(config: Any, steps: int, every: int, num_eval: int) -> dict[str, Any]:
    cfg = config_lib.build(config_lib.RunConfig, config)
    if not cfg.cold_start.steps:
        raise ValueError("the config has no cold start (cold_start.steps = 0)")
    workdir = tempfile.mkdtemp(prefix="cold_start_probe_")
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    run, initial_params = components_lib.build(cfg, workdir)
    cold = run.cold_start
    tokenizer, pad = run.tokenizer, run.tokenizer.pad_id
    critic = feedback_lib.make_critic(cfg.golf.critic or None, run.task)
    template = refinement_lib.TEMPLATES[cfg.golf.template]
    rl_test = list(run.task.load("test"))[:num_eval]
    cold_test = list(cold.task.load("test"))[:num_eval]
    cold_train = list(cold.problems[:num_eval])
    plain = {
        "plain_cold_train": [sft_examples.make_sft_example(p, tokenizer) for p in cold_train],
        "plain_cold": [sft_examples.make_sft_example(p, tokenizer) for p in cold_test],
        "plain_rl": [sft_examples.make_sft_example(p, tokenizer) for p in rl_test],
    }
    refine_rl = sft_examples.make_cold_start_examples(
        run.task, rl_test, tokenizer, critic=critic, refine_fraction=1.0, max_attempts=1,
        max_prompt_tokens=cfg.golf.max_refinement_prompt_tokens, template=template, seed=1)
    # A cold-start task with num_test = 0 has no held-out set to measure.
    sets = {name: examples for name, examples in {**plain, "refine_rl": refine_rl}.items() if examples}
    response_len = cfg.sampling.max_new_tokens

    trainer = run.cold_start_trainer
    state = trainer.init_state(initial_params, cfg.seed)
    data = cold.data()
    rows, started, nll = [], time.monotonic(), []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            row = {"step": step, "seconds": round(time.monotonic() - started, 1),
                   "nll": float(np.mean(nll)) if nll else None}
            for name, examples in sets.items():
                row[name] = exact_match(state.params, run.model_config, examples, pad,
                                        cold.prompt_len(examples), response_len)
            rows.append(row)
            nll = []
            print(json.dumps(row), flush=True)
        if step < steps:
            batch, _ = cold.batch(step, data)
            state, metrics = trainer.step(state, trainer.put_batch(batch))
            nll.append(metrics_lib.to_scalars(metrics)["loss"])
    return {"config": config_lib.to_dict(cfg), "steps": steps, "num_eval": num_eval,
            "rows": rows, "total_seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/configs/golf.py:arith")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--num-eval", type=int, default=128)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    path, variant = jobs.split_config_arg(args.config)
    config = jobs.load_config_module(path).get_config(variant)
    for key, value in jobs.parse_overrides(args.set).items():
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        try:
            config.update_from_flattened_dict({key: parsed})
        except (KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"--set {key}={value}: {e}") from None
    result = probe(config, args.steps, args.every, args.num_eval)
    result["command"] = "python benchmarks/cold_start_probe.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
