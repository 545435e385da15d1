"""Tests for golfjax/config.py: ConfigDict -> typed dataclasses, once."""

import ml_collections
import numpy as np
import pytest

from golfjax import config as config_lib
from golfjax.losses import LossConfig
from golfjax.sampling import SamplingConfig


def _config(**sections):
    config = ml_collections.ConfigDict(config_lib.to_dict(config_lib.RunConfig()))
    for section, values in sections.items():
        for key, value in values.items():
            config[section][key] = value
    return config


def test_round_trip_of_the_defaults():
    built = config_lib.build(config_lib.RunConfig, _config())
    assert built == config_lib.RunConfig()
    assert isinstance(built.loss, LossConfig)
    # One default per setting: the sampling section's are the sampler's.
    sampler = SamplingConfig()
    for name in ("temperature", "top_p", "top_k", "max_new_tokens", "prompt_buckets", "decode_loops"):
        assert getattr(built.sampling, name) == getattr(sampler, name), name


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"train": {"lrr": 1.0}}, r"^unknown config key train.lrr; did you mean one of advantage, "),
        ({"optimizer": {"lrr": 1.0}}, r"^unknown config key optimizer.lrr; did you mean optimizer.lr\?$"),
        ({"optimizer": {"lr": 0.0}}, r"config.optimizer.lr=0.0; expected a finite number > 0"),
        ({"optimizer": {"lr": float("inf")}}, r"^config.optimizer.lr=inf; expected a finite number > 0$"),
        ({"cold_start": {"lr": float("nan")}}, r"^config.cold_start.lr=nan; expected a finite number > 0$"),
        ({"train": {"kl_coef": float("inf")}}, r"^config.train.kl_coef=inf; expected a finite number >= 0$"),
        ({"train": {"kl_in": "advantage"}}, r"^config.train.kl_in='advantage'; expected one of loss, reward$"),
        ({"train": {"ref_path": "/ref"}}, r"^config.train.ref_path='/ref'; expected '' while kl_coef = 0"),
        ({"loss": {"agg": "mean"}}, r"config.loss.agg='mean' is not an aggregation mode"),
        ({"train": {"loss": "ppo"}}, r"config.train.loss: unknown loss 'ppo'; expected one of cispo"),
        ({"train": {"advantage": "gae"}}, r"config.train.advantage: unknown advantage 'gae'"),
        ({"golf": {"strategy": "never"}}, r"config.golf.strategy='never'; expected one of adaptive, always, hybrid"),
        ({"eval": {"every": 0}}, r"config.eval.every=0; expected >= 1"),
        ({"eval": {"samples": 0}}, r"config.eval.samples=0; expected >= 1"),
        ({"eval": {"num_problems": 0}}, r"config.eval.num_problems=0; expected >= 1"),
        ({"seed": -1}, r"config.seed=-1; expected an int in"),
        ({"checkpoint": {"every": 0}}, r"config.checkpoint.every=0; expected >= 1"),
        ({"checkpoint": {"keep": 0}}, r"config.checkpoint.keep=0; expected >= 1"),
        ({"sampling": {"max_new_tokens": 0}}, r"config.sampling.max_new_tokens=0; expected >= 1"),
        ({"sampling": {"prompt_buckets": [64, 32]}}, r"config.sampling.prompt_buckets=\(64, 32\); expected increasing"),
        ({"sampling": {"top_p": 0.0}}, r"config.sampling.top_p=0.0; expected in \(0, 1\]"),
        ({"schedule": {"minibatches": 0}}, r"config.schedule.minibatches=0; expected >= 1"),
        ({"mesh": {"data": 0}}, r"config.mesh.data=0; expected >= 1 or -1"),
        ({"model": {"preset": "huge"}}, r"config.model.preset='huge'; expected one of"),
        ({"model": {"attention": "flash"}}, r"config.model.attention='flash'; expected one of auto, "),
        ({"model": {"attention_block": -1}}, r"config.model.attention_block=-1; expected >= 1, or 0"),
        ({"model": {"decode_layers": "rolled"}}, r"config.model.decode_layers='rolled'; expected one of auto, scan, unrolled"),
        ({"model": {"hf_config": "/no/such/config.json"}}, r"config.model.hf_config='/no/such/config.json'; expected a config.json file"),
        ({"model": {"dims": {"layers": 2}}}, r"config.model.dims=\{'layers': 2\}; expected ModelConfig fields \(attention, "),
        ({"model": {"dims": {"num_layers": 2}, "hf_path": "/ckpt"}}, r"config.model.dims=.*and hf_path unset"),
        ({"sampling": {"prompts_per_call": -1}}, r"config.sampling.prompts_per_call=-1; expected >= 0"),
        ({"task": {"name": "chess"}}, r"config.task.name='chess'; expected one of arith"),
        ({"task": {"template_kwargs": {"enable thinking": 1}}}, r"config.task.template_kwargs: key 'enable thinking' is not an identifier"),
        ({"golf": {"critic": "oracle"}}, r"config.golf.critic='oracle'; expected '' or one of"),
        ({"train": {"kl_estimator": "kl"}}, r"config.train.kl_estimator='kl'; expected one of k1, k2, k3"),
        ({"train": {"steps": "ten"}}, r"config.train.steps='ten'; expected int"),
        ({"bogus": {}}, r"^unknown config key bogus; did you mean one of checkpoint, cold_start, "),
        ({"cold_start": {"refine_task_kwargs": {"min_digits": 3}}},
         r"config.cold_start.refine_task_kwargs=\{'min_digits': 3\} but refine_fraction = 0"),
        ({"cold_start": {"steps": 10, "refine_first_steps": 11}},
         r"config.cold_start.refine_first_steps=11; expected 0 to steps = 10"),
    ],
)
def test_bad_keys_and_values_name_the_key(mapping, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.build(config_lib.RunConfig, mapping)


def test_an_unknown_key_is_named_from_the_schema_for_the_command_line():
    from golfjax.config_dict import unknown_key

    assert unknown_key(config_lib.RunConfig, "train.steps") is None
    assert unknown_key(config_lib.RunConfig, "task.kwargs.max_digits") is None  # The task checks its own.
    assert unknown_key(config_lib.RunConfig, "train.stepz") == "unknown config key train.stepz; did you mean train.steps?"
    assert unknown_key(config_lib.RunConfig, "trian.steps").startswith(
        "unknown config key trian; did you mean train?")


def test_model_section_overrides_only_what_it_sets():
    from golfjax import components
    from golfjax.models import config as model_config_lib

    cfg = config_lib.build(config_lib.RunConfig, {"model": {"attention": "blockwise", "attention_block": 64}})
    assert cfg.model.overrides() == {"attention": "blockwise", "attention_block": 64}
    model_config, _ = components.make_model(cfg, mesh=None)
    default = model_config_lib.get_preset("tiny")
    assert (model_config.attention, model_config.attention_block) == ("blockwise", 64)
    assert (model_config.mlp_chunk, model_config.remat) == (default.mlp_chunk, default.remat)
    assert model_config.decode_layers == default.decode_layers == "auto"
    cfg = config_lib.build(config_lib.RunConfig, {"model": {"decode_layers": "scan"}})
    assert cfg.model.overrides() == {"decode_layers": "scan"}
    assert components.make_model(cfg, mesh=None)[0].decode_layers == "scan"


def test_model_dims_come_from_a_preset_with_overrides_or_a_config_json(tmp_path):
    import json

    from golfjax import components
    from golfjax.models import config as model_config_lib
    from golfjax.models import hf

    cfg = config_lib.build(config_lib.RunConfig, {"model": {"preset": "qwen3-8b", "dims": {"num_layers": 2}}})
    assert components.architecture(cfg.model) == model_config_lib.get_preset("qwen3-8b").replace(num_layers=2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf.config_to_hf(model_config_lib.get_preset("llama3.1-8b"))))
    cfg = config_lib.build(config_lib.RunConfig, {"model": {"hf_config": str(path), "dims": {"num_layers": 1},
                                                            "remat": True}})
    assert components.architecture(cfg.model) == model_config_lib.get_preset("llama3.1-8b").replace(num_layers=1)
    # A run without a checkpoint initialises those dims (remat is the program's).
    tiny = config_lib.build(config_lib.RunConfig, {"model": {"dims": {"num_layers": 1, "embed_dim": 32}}})
    config, params = components.make_model(tiny, mesh=None)
    assert (config.num_layers, params["embed"]["embedding"].shape[1]) == (1, 32)


def test_refine_first_steps_precede_the_refine_fraction_draw():
    first = config_lib.ColdStartSection(steps=40, refine_first_steps=10)
    assert first.refines
    assert [first.is_refine_step(0, s) for s in range(40)] == [True] * 10 + [False] * 30
    mixed = config_lib.ColdStartSection(steps=400, refine_first_steps=10, refine_fraction=0.5)
    later = [mixed.is_refine_step(3, s) for s in range(10, 400)]
    assert all(mixed.is_refine_step(3, s) for s in range(10))
    assert 0.4 < np.mean(later) < 0.6
    # The draw depends on seed and step only: a resumed run makes the same choices.
    assert later == [mixed.is_refine_step(3, s) for s in range(10, 400)]
    assert not config_lib.ColdStartSection(steps=40).refines
    config_lib.ColdStartSection(steps=0, refine_first_steps=10)  # No cold start: nothing to check.


def test_cross_section_constraints_name_their_keys():
    cfg = config_lib.RunConfig()
    config_lib.validate(cfg, 8)
    bad = config_lib.build(config_lib.RunConfig, _config(train={"prompts_per_step": 3}, sampling={"group_size": 2}))
    with pytest.raises(ValueError, match=r"config.train.prompts_per_step \* config.sampling.group_size = 6 rows"
                                         r" do not split over the mesh's 8 data x fsdp devices"):
        config_lib.validate(bad, 8)
    bad = config_lib.build(config_lib.RunConfig, _config(train={"micro_batches": 3}))
    with pytest.raises(ValueError, match=r"= 128 rows do not split into config.train.micro_batches = 3"):
        config_lib.validate(bad, 8)
    bad = config_lib.build(config_lib.RunConfig, _config(cold_start={"steps": 5, "batch_size": 12}))
    with pytest.raises(ValueError, match=r"config.cold_start.batch_size = 12 rows do not split"):
        config_lib.validate(bad, 8)
    bad = config_lib.build(config_lib.RunConfig, _config(task={"kwargs": {"digits": 3}}))
    with pytest.raises(ValueError, match=r"config.task.kwargs: task 'arith' refuses \{'digits': 3\}"):
        config_lib.validate(bad, 8)
    bad = config_lib.build(config_lib.RunConfig, _config(cold_start={"steps": 5, "task_kwargs": {"num_train": -1}}))
    with pytest.raises(ValueError, match=r"config.cold_start.task_kwargs: task 'arith' refuses"):
        config_lib.validate(bad, 8)


@pytest.mark.parametrize("sections, message", [
    # issue 26, Found 4: greedy groups are identical, so every group advantage is 0.
    ({"sampling": {"temperature": 0.0}},
     r"^config.sampling.temperature=0 \(greedy\) with config.sampling.group_size=8: a group's samples would"
     r" be identical and every 'grpo' advantage \(config.train.advantage\) 0; expected a temperature > 0$"),
    # issue 26, Found 2: the schedule spans RL's steps.
    ({"optimizer": {"total_steps": 1000}},
     r"^config.optimizer.total_steps=1000 but config.train.steps=100: the learning-rate schedule spans RL's"
     r" steps; leave total_steps at 0 \(the default\) to take them$"),
    ({"optimizer": {"schedule": "cosine", "warmup_steps": 99}},
     r"^config.optimizer.warmup_steps=99; expected < 99 \(config.train.steps = 100 - 1\), or the rate never"
     r" reaches its floor$"),
    ({"optimizer": {"warmup_steps": 100}},
     r"^config.optimizer.warmup_steps=100; expected < 100 \(config.train.steps = 100\), or the rate never"
     r" reaches config.optimizer.lr$"),
])
def test_settings_that_would_train_wrongly_in_silence_are_refused(sections, message):
    bad = config_lib.build(config_lib.RunConfig, _config(**sections))
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(bad, 8)


def test_the_schedules_span_their_phases():
    cfg = config_lib.build(config_lib.RunConfig, _config(
        train={"steps": 40}, cold_start={"steps": 7}, optimizer={"total_steps": 40, "schedule": "cosine"}))
    config_lib.validate(cfg, 8)  # An explicit horizon that agrees is fine.
    assert cfg.rl_optimizer.total_steps == 40 and cfg.rl_optimizer.schedule == "cosine"
    cold = cfg.cold_start_optimizer
    assert (cold.total_steps, cold.schedule, cold.warmup_steps, cold.lr) == (7, "constant", 0, cfg.cold_start.lr)
    # Greedy sampling is fine without a group, or without RL.
    config_lib.validate(config_lib.build(config_lib.RunConfig, _config(
        sampling={"temperature": 0.0, "group_size": 1}, train={"prompts_per_step": 16})), 8)
    config_lib.validate(config_lib.build(config_lib.RunConfig, _config(
        sampling={"temperature": 0.0}, train={"steps": 0})), 8)
