"""golfjax.models.hf against transformers (PyTorch CPU): parity, round trips, errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from golfjax.models import hf
from golfjax.models import transformer
from golfjax.models.safetensors_io import SafetensorsFile, write_file
from tests.models import hf_utils

TOL = 1e-4


def golf_logits(config, params, tokens, positions, mask) -> np.ndarray:
    logits, _ = jax.jit(transformer.apply, static_argnames="config")(
        params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask),
        config=config)
    return np.asarray(logits)


def assert_parity(config, params, model, atol: float = TOL) -> None:
    tokens, positions, mask = hf_utils.left_padded_batch()
    ours = golf_logits(config, params, tokens, positions, mask)
    ref = hf_utils.torch_logits(model, tokens, positions, mask)
    # Padding slots hold garbage on both sides; only real tokens are compared.
    np.testing.assert_allclose(ours[mask], ref[mask], atol=atol, rtol=0)


@pytest.fixture(scope="module", params=sorted(hf_utils.FAMILIES))
def family_ckpt(request, tmp_path_factory):
    model = hf_utils.make_hf_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    return request.param, model, path


def test_parity_left_padded_float32(family_ckpt):
    family, model, path = family_ckpt
    config, params = hf.load(path)
    assert config.family == family
    assert config.num_kv_heads < config.num_heads  # GQA is exercised.
    expected = {"llama3": (False, False, False, True),
                "qwen2": (True, False, True, False),
                "qwen3": (False, True, False, False),
                "qwen3_moe": (False, True, False, False)}[family]
    assert (config.qkv_bias, config.qk_norm, config.tie_embeddings,
            config.rope_scaling is not None) == expected
    assert_parity(config, params, model)


def test_llama3_rope_scaling_matters(tmp_path):
    hf_utils.make_hf_model("llama3").save_pretrained(str(tmp_path))
    config, params = hf.load(str(tmp_path))
    tokens, positions, mask = hf_utils.left_padded_batch()
    scaled = golf_logits(config, params, tokens, positions, mask)
    plain = golf_logits(config.replace(rope_scaling=None), params, tokens,
                        positions, mask)
    # Otherwise the parity test would not distinguish scaled from plain RoPE.
    assert np.abs(scaled - plain)[mask].max() > 1e-2


@pytest.mark.parametrize("max_shard_bytes", [None, 40_000])
def test_save_then_transformers_from_pretrained(family_ckpt, tmp_path,
                                                max_shard_bytes):
    _, model, path = family_ckpt
    config, params = hf.load(path)
    kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    hf.save(str(tmp_path), config, params, **kwargs)
    sharded = os.path.exists(tmp_path / "model.safetensors.index.json")
    assert sharded == (max_shard_bytes is not None)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), torch_dtype=torch.float32).eval()
    assert_parity(config, params, reloaded)
    # And our own loader reads back exactly what was saved.
    config2, params2 = hf.load(str(tmp_path))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_load_sharded_index_from_save_pretrained(family_ckpt, tmp_path):
    _, model, _ = family_ckpt
    model.save_pretrained(str(tmp_path), max_shard_size="50KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    config, params = hf.load(str(tmp_path))
    assert_parity(config, params, model)


def test_bfloat16_checkpoint_loads(tmp_path):
    model = hf_utils.make_hf_model("qwen3").to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    config, params = hf.load(str(tmp_path))
    assert config.param_dtype == "bfloat16"
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    # Loaded as float32, a bf16 checkpoint matches the float32 torch model with the
    # same (bf16-rounded) weights.
    config32, params32 = hf.load(str(tmp_path), dtype="float32")
    assert config32.compute_dtype == "float32"
    # Reloaded rather than `model.float()`, which would keep RoPE's inv_freq
    # buffer rounded to bf16.
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), torch_dtype=torch.float32).eval()
    assert_parity(config32, params32, reference)
    np.testing.assert_array_equal(
        np.asarray(params["embed"]["embedding"], np.float32),
        np.asarray(params32["embed"]["embedding"]))


def test_transformers_4x_config_form(family_ckpt, tmp_path):
    family, model, path = family_ckpt
    config5, _ = hf.load(path)
    hf_config = json.load(open(os.path.join(path, "config.json")))
    rope = hf_config.pop("rope_parameters")
    hf_config["torch_dtype"] = hf_config.pop("dtype")
    hf_config["rope_theta"] = rope.pop("rope_theta")
    hf_config["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    os.symlink(os.path.join(path, "model.safetensors"),
               tmp_path / "model.safetensors")
    json.dump(hf_config, open(tmp_path / "config.json", "w"))
    config4, _ = hf.load(str(tmp_path))
    assert config4 == config5


# --------------------------------------------------------------------------- errors

@pytest.fixture
def ckpt_copy(tmp_path):
    model = hf_utils.make_hf_model("qwen3")
    model.save_pretrained(str(tmp_path))
    return tmp_path


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        hf.load(str(tmp_path / "nope"))


def test_missing_config(ckpt_copy):
    os.remove(ckpt_copy / "config.json")
    with pytest.raises(FileNotFoundError, match="No config.json"):
        hf.load(str(ckpt_copy))


def test_missing_weights(ckpt_copy):
    os.remove(ckpt_copy / "model.safetensors")
    with pytest.raises(FileNotFoundError,
                       match="model.safetensors or model.safetensors.index.json"):
        hf.load(str(ckpt_copy))


def test_missing_shard_file(ckpt_copy):
    model = hf_utils.make_hf_model("qwen3")
    model.save_pretrained(str(ckpt_copy), max_shard_size="50KB")
    os.remove(ckpt_copy / "model.safetensors")
    index = json.load(open(ckpt_copy / "model.safetensors.index.json"))
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(ckpt_copy / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        hf.load(str(ckpt_copy))


def test_unsupported_architecture(ckpt_copy):
    config = json.load(open(ckpt_copy / "config.json"))
    config["architectures"] = ["GPT2LMHeadModel"]
    json.dump(config, open(ckpt_copy / "config.json", "w"))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM.*"
                       "Qwen2ForCausalLM.*Qwen3ForCausalLM"):
        hf.load(str(ckpt_copy))


def test_missing_tensor_names_key(ckpt_copy):
    path = str(ckpt_copy / "model.safetensors")
    src = SafetensorsFile(path)
    arrays = {k: src.read(k) for k in src.keys()}
    del src
    drop = "model.layers.1.self_attn.k_norm.weight"
    del arrays[drop]
    write_file(path, [(k, a.shape, a.dtype) for k, a in arrays.items()],
               arrays.__getitem__)
    with pytest.raises(ValueError, match=drop.replace(".", r"\.")):
        hf.load(str(ckpt_copy))


def test_shape_mismatch_names_key_and_shapes(ckpt_copy):
    config = json.load(open(ckpt_copy / "config.json"))
    config["intermediate_size"] = 80
    json.dump(config, open(ckpt_copy / "config.json", "w"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight"
                       r".*\(96, 64\).*\(80, 64\)"):
        hf.load(str(ckpt_copy))
