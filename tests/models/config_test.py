"""golfjax.models.config: validation, dtype normalisation, presets."""

import jax.numpy as jnp
import pytest

from golfjax.models import config as config_lib


@pytest.mark.parametrize("field,value", [
    ("num_heads", 3), ("head_dim", 15), ("vocab_size", 0), ("family", "gpt2"),
    ("param_dtype", "float16"), ("compute_dtype", "int8"), ("rope_theta", -1.0),
    ("num_layers", 2.5), ("decode_layers", "rolled"),
])
def test_invalid_field_named(field, value):
    with pytest.raises(ValueError, match=field):
        config_lib.ModelConfig(**{field: value})


def test_rope_scaling_validated():
    with pytest.raises(ValueError, match="high_freq_factor"):
        config_lib.RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)


def test_dtypes_normalised_and_hashable():
    a = config_lib.ModelConfig(param_dtype=jnp.bfloat16, compute_dtype=jnp.float32)
    b = config_lib.ModelConfig(param_dtype="bfloat16", compute_dtype="float32")
    assert a == b and hash(a) == hash(b)
    assert a.param_jnp_dtype == jnp.bfloat16


def test_presets():
    for name, config in config_lib.PRESETS.items():
        assert config.num_params > 0, name
    assert 80e6 < config_lib.get_preset("base_100m").num_params < 120e6
    with pytest.raises(ValueError, match="tiny"):
        config_lib.get_preset("huge")


@pytest.mark.parametrize("name, total, non_embedding", [
    # The model cards' "Number of Parameters" and "Non-Embedding" (Qwen), in billions.
    ("qwen3-1.7b", 1.7, 1.4), ("qwen3-4b", 4.0, 3.6), ("qwen3-8b", 8.2, 6.95),
    ("qwen2.5-math-1.5b", 1.54, 1.31), ("qwen2.5-math-7b", 7.61, 6.53), ("llama3.1-8b", 8.03, None),
])
def test_checkpoint_presets_have_the_published_sizes(name, total, non_embedding):
    def near(count, published):  # Within one unit of the published figure's last digit.
        return abs(count / 1e9 - published) <= 10.0 ** -len(str(published).split(".")[1])

    config = config_lib.get_preset(name)
    embeddings = config.vocab_size * config.embed_dim * (1 if config.tie_embeddings else 2)
    assert near(config.num_params, total)
    assert non_embedding is None or near(config.num_params - embeddings, non_embedding)
    assert (config.param_dtype, config.compute_dtype) == ("bfloat16", "bfloat16")


def test_decode_layers_auto_is_unrolled_on_cpu_only():
    auto = config_lib.ModelConfig()
    assert config_lib.resolve_decode_layers(auto, "cpu") == "unrolled"
    assert config_lib.resolve_decode_layers(auto, "gpu") == "unrolled"
    assert config_lib.resolve_decode_layers(auto, "tpu") == "scan"
    for value in ("scan", "unrolled"):
        config = config_lib.ModelConfig(decode_layers=value)
        assert config_lib.resolve_decode_layers(config, "cpu") == value
        assert config_lib.resolve_decode_layers(config, "gpu") == value
