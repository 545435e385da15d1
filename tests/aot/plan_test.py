"""golfjax/aot/plan.py and the reports of golfjax/aot: a run's programs, what
they hold, and the HBM accounting (on the 8 simulated CPU devices)."""

import jax
import pytest

from experiments.configs import golf as golf_config
from experiments.configs import vespo as vespo_config
from golfjax import aot
from golfjax import config as config_lib
from golfjax import sharding
from golfjax import types
from golfjax.aot import plan, slices
from golfjax.models import transformer


def _cfg(module, variant, **overrides):
    c = module.get_config(variant)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        c[section][key] = value
    return config_lib.build(config_lib.RunConfig, c)


def _by_name(programs):
    out = {}
    for p in programs:
        out.setdefault(p.name, []).append(p)
    return out


def test_golf_run_compiles_the_train_step_samplers_evaluation_and_cold_start():
    cfg = _cfg(golf_config, "smoke")
    programs = plan.programs(cfg, jax.devices())
    names = [p.name for p in programs]
    assert names == ["train step", "log-probs", "log-probs", "rollout prefill", "rollout decode",
                     "refinement prefill", "refinement decode", "eval prefill", "eval decode",
                     "cold start step"]
    step = programs[0]
    p_max = cfg.sampling.prompt_buckets[-1]
    n = cfg.train.prompts_per_step * cfg.sampling.group_size
    # GOLF: the original rows at the largest prompt bucket, the refinement rows
    # at the bucket of the refinement budget (128 of 32, 64, 112, 128, 256).
    assert step.shapes.startswith(f"{n} rows, P {p_max} + {n} rows, P 128; T {cfg.sampling.max_new_tokens}")
    by_name = _by_name(programs)
    # 4 prompts take the smallest batch bucket over the 8 row shards.
    assert (cfg.train.prompts_per_step, cfg.eval.samples) == (4, 2)
    assert by_name["eval decode"][0].shapes.startswith("8 x 2 rows")
    assert all(p.devices == "learner" for p in programs)


def test_held_bytes_name_what_the_run_keeps_on_the_devices():
    sync = _cfg(vespo_config, "vespo,n=4", **{"train.kl_coef": 0.1})
    programs = _by_name(plan.programs(sync, jax.devices()))
    mesh, config = sharding.make_mesh(1, -1, 1), plan.model_config(sync)
    params = plan.device_bytes(jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        transformer.abstract_params(config), transformer.param_shardings(config, mesh)))
    n = sync.train.prompts_per_step * sync.sampling.group_size
    batch = plan.device_bytes(types.abstract_batch(
        n, sync.sampling.prompt_buckets[-1], sync.sampling.max_new_tokens, sharding.row_sharding(mesh)))
    step = programs["train step"][0]
    # Three more mini-batches of the rollout wait on the devices; the KL
    # reference is one more copy of the parameters (`kl_reference_copies`).
    assert step.held["rollout's other batches"] == 3 * batch
    assert step.held["KL reference parameters"] == params > 0
    assert programs["rollout decode"][0].held["optimizer moments"] > params  # Adam: two moments.

    shared = _by_name(plan.programs(_cfg(vespo_config, "async"), jax.devices()))
    assert shared["train step"][0].held["parameter snapshots"] == 2 * params
    assert shared["train step"][0].held["rollout's other batches"] == 0
    assert shared["rollout decode"][0].held["learner parameters"] == params

    own = _cfg(vespo_config, "async", **{"schedule.rollout_devices": 4})
    programs = _by_name(plan.programs(own, jax.devices()))
    assert programs["rollout decode"][0].devices == "rollout"
    assert set(programs["rollout decode"][0].held) == {"the newer parameter snapshot"}
    assert programs["eval decode"][0].devices == "learner"


def test_prompts_per_call_bounds_the_rollout_programs():
    cfg = _cfg(vespo_config, "vespo,n=4", **{"train.prompts_per_step": 32,
                                             "sampling.prompts_per_call": 12})
    programs = _by_name(plan.programs(cfg, jax.devices()))
    # 12 prompts a call, rounded up to a multiple of the 8 row shards.
    assert programs["rollout decode"][0].shapes.startswith(f"16 x {cfg.sampling.group_size} rows")


def test_reports_add_up_donation_and_held_bytes_and_name_the_shortfall():
    cfg = _cfg(vespo_config, "vespo,n=4")
    program = next(p for p in plan.programs(cfg, jax.devices()) if p.name == "train step")
    report = aot.compile_program(program)
    assert report.alias_bytes > 0  # The donated train state.
    assert report.total_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                  + report.temp_bytes + report.held_bytes)
    roomy = slices.Chip("big", 2**40, 1e12, 1e15, 1, 2, 8)
    small = slices.Chip("small", int(report.total_bytes) - 2**20, 1e12, 1e15, 1, 2, 8)
    assert report.fits(roomy) and aot.misfits([report], roomy) == []
    [line] = aot.misfits([report], small)
    assert line.startswith("train step (") and "GiB more than a small chip's" in line
    assert "train step" in aot.table([report], roomy)


def test_the_compiler_refusing_memory_is_a_report_not_a_crash():
    program = plan.Program("huge", "1 array", "learner", lambda: _refusal(), {"x": 1.0},
                           plan.work_lib.Work(0.0, 0.0))
    report = aot.compile_program(program)
    assert report.refused.startswith("RESOURCE_EXHAUSTED")
    assert report.required_bytes == 400.0 * 2**30 and not report.fits(slices.CHIPS["v5p"])
    assert "the TPU compiler: RESOURCE_EXHAUSTED" in aot.misfits([report], slices.CHIPS["v5p"])[0]


def _refusal():
    class Refused:
        def compile(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required"
                               " for HLO temporaries (400.00G) exceeds available HBM (95.74G).")
    return Refused()


def test_an_unexpected_compile_error_is_raised():
    class Broken:
        def compile(self):
            raise RuntimeError("INTERNAL: something else")
    program = plan.Program("p", "", "learner", Broken, {}, plan.work_lib.Work(0.0, 0.0))
    with pytest.raises(RuntimeError, match="something else"):
        aot.compile_program(program)
