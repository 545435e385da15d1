"""Tests for golfjax/config_dict.py: ConfigDicts to typed frozen dataclasses and back."""

import json

import ml_collections
import pytest

from golfjax import config as config_lib
from golfjax import config_dict


def _config(**sections):
    config = ml_collections.ConfigDict(config_dict.to_dict(config_lib.RunConfig()))
    for section, values in sections.items():
        for key, value in values.items():
            config[section][key] = value
    return config


def test_overrides_are_typed():
    built = config_dict.build(
        config_lib.RunConfig,
        _config(optimizer={"lr": 1}, loss={"agg": "seq-mean-token-sum-norm"}, task={"kwargs": {"max_digits": 3}}),
    )
    assert built.optimizer.lr == 1.0 and isinstance(built.optimizer.lr, float)
    assert built.loss.agg == "seq-mean-token-sum-norm"
    assert built.task.kwargs == {"max_digits": 3}
    hash(built.loss)  # static under jit


def test_errors_name_the_dotted_key():
    with pytest.raises(ValueError, match=r"config.train.steps='ten'; expected int"):
        config_dict.build(config_lib.RunConfig, {"train": {"steps": "ten"}})
    with pytest.raises(ValueError, match=r"config.sampling.prompt_buckets=3; expected a sequence"):
        config_dict.build(config_lib.RunConfig, {"sampling": {"prompt_buckets": 3}})
    # A library dataclass's own message (`OptimizerConfig.lr=...`) gets the dotted key too.
    with pytest.raises(ValueError, match=r"^config.optimizer.lr=0.0; expected a finite number > 0$"):
        config_dict.build(config_lib.RunConfig, _config(optimizer={"lr": 0.0}))


def test_to_dict_is_json_friendly():
    as_dict = config_dict.to_dict(config_lib.RunConfig())
    assert json.loads(json.dumps(as_dict)) == as_dict
