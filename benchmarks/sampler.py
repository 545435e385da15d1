"""Sampler throughput: golfjax vs google-tunix 0.1.7 vs transformers (PyTorch CPU).

Command, from a fresh clone (creates .venv-bench with golfjax[bench] first):

    make bench                      # full run (see runtime below)
    make bench BENCH_ARGS=--quick   # smoke run: tiny model, B=8, 32 tokens, ~1.5 min

which runs `.venv-bench/bin/python benchmarks/sampler.py --out
benchmarks/results/sampler.json`.

What is measured. For each model (the `tiny` and a ~20M-parameter Qwen 2
config, written as transformers checkpoints with random weights into a temp dir
and loaded from there by all three engines) and each batch size B (8 and 64
prompts), every engine generates G = 8 samples per prompt, exactly T = 128 new
tokens each (no stop token, so all engines produce the same count), by pure
temperature-1 sampling (top_p = 1, top_k = 0: the setting RL uses). Prompts are
random token ids of 16..32 tokens, left-padded to 32. The figure is generated
tokens per second, B * G * T / wall time of one whole generate call (prefill
included, host post-processing of each engine's own API included), the best of
`--repeats` timed calls (default: up to 10 within 60 s, so short cases get a
best-of-several and long ones one call), after an untimed warm-up that compiles the
same programs (the JAX engines run them with every row already finished, so the
decode loop exits at once; PyTorch generates 2 tokens). golfjax also reports its
prefill time and decode-only tokens/s. Each engine runs in its own process
(PyTorch's OpenMP pool and XLA's thread pool slow each other down in one), all
from the same checkpoint files. Peers:

- tunix: `tunix.generate.sampler.Sampler` over `tunix.models.qwen2` loaded with
  `params.create_model_from_safe_tensors`; it gets the B * G prompts (it has no
  group sampling) as strings of a whitespace id tokenizer.
- transformers: `model.generate(..., num_return_sequences=G)` on PyTorch CPU,
  float32, `torch.inference_mode()`.

Each engine's figures also hold the process CPU seconds of its fastest call
and the 1-minute load average when it was measured: on a shared machine CPU
time is the steadier measure of work done, wall time the one that counts.

On an accelerator (a JAX backend other than CPU) the script also reports
golfjax's tokens/s there and the fraction of the memory-bandwidth bound that
its decode reaches: each decode step must read every weight once plus the KV
cache written so far (`sampling.decode_bytes_per_step`), so decode tokens/s <=
N * bandwidth / bytes per step, with the cache at the prompt bucket plus on
average (T - 1) / 2 generated slots. The bandwidth comes from a table of
device kinds (`BANDWIDTH`) or `--mem-bandwidth-gbs` (which also computes the
fraction for a CPU run).

Runtime: dominated by transformers on the 20M model at B = 64 (65,536 tokens in
one eager PyTorch call): about 10 minutes for the full run on an idle 2-core
AVX-512 machine, ~36 min on a shared, slower 2-core CPU (load average 6-10).
The JSON records the load average before and after, since other work on the
machine skews every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

# Runnable as `python benchmarks/sampler.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import programs  # noqa: E402
from golfjax import sampling  # noqa: E402
from golfjax.models import config as config_lib  # noqa: E402
from golfjax.models import hf  # noqa: E402
from golfjax.models import transformer  # noqa: E402

PROMPT_LEN = 32
MIN_PROMPT_LEN = 16

# Qwen 2 style (qkv bias, tied embeddings), the architecture tunix can load.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_theta=10000.0),
    "20m": dict(vocab_size=8192, hidden_size=384, intermediate_size=1024,
                num_hidden_layers=12, num_attention_heads=6,
                num_key_value_heads=2, head_dim=64, rope_theta=1e6),
}

# Peak memory bandwidth (bytes/s) of accelerators, by `device.device_kind`.
BANDWIDTH: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100-SXM4-80GB": 2.04e12,
    "NVIDIA A100-SXM4-40GB": 1.56e12,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 8.19e11,
    "TPU v5e": 8.19e11,
    "TPU v5p": 2.76e12,
    "TPU v6 lite": 1.64e12,
}


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    batch: int  # B prompts.
    group: int  # G samples per prompt.
    new_tokens: int  # T.

    @property
    def rows(self) -> int:
        return self.batch * self.group

    @property
    def tokens(self) -> int:
        return self.rows * self.new_tokens


def make_checkpoint(name: str, directory: str) -> str:
    """A random transformers Qwen 2 checkpoint of `MODELS[name]` in `directory`."""
    import torch
    import transformers

    path = os.path.join(directory, name)
    config = transformers.Qwen2Config(
        **MODELS[name], tie_word_embeddings=True, rms_norm_eps=1e-6,
        max_position_embeddings=2048, use_sliding_window=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.float32)
    model.save_pretrained(path)
    return path


def make_prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    # Ids from 1: 0 is the pad id of every engine here (tunix masks by value).
    rng = np.random.RandomState(seed)
    lengths = rng.randint(MIN_PROMPT_LEN, PROMPT_LEN + 1, batch)
    return [rng.randint(1, vocab, n).tolist() for n in lengths]


def timed(run: Callable[[], Any], repeats: int,
          warmup: Callable[[], Any] | None = None
          ) -> tuple[float, dict[str, Any], Any]:
    """(warm-up seconds, figures of the fastest timed call, the last result).

    `warmup` (default: `run`) must compile everything `run` uses; the JAX
    engines pass a call that compiles the same programs but exits the decode
    loop at once. `repeats` timed calls, or with `repeats == 0` as many as fit
    in `_AUTO_SECONDS` (at least 1, at most `_AUTO_MAX`): short cases get a
    best-of-several, which damps the noise of other work on the machine, and
    long ones are timed once. The figures: `seconds` (wall) of the fastest
    call, its process CPU seconds (all threads; less sensitive than wall time
    to other processes taking the cores, though not to their cache traffic),
    every call's wall seconds, and the 1-minute load average before the
    first call.
    """
    start = time.perf_counter()
    (warmup or run)()
    warmup_s = time.perf_counter() - start
    load = os.getloadavg()[0]
    best, best_cpu, result, calls = float("inf"), float("inf"), None, []
    while len(calls) < (repeats or _AUTO_MAX):
        start, cpu = time.perf_counter(), time.process_time()
        result = run()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, best_cpu = elapsed, time.process_time() - cpu
        calls.append(elapsed)
        if not repeats and sum(calls) + elapsed > _AUTO_SECONDS:
            break
    return warmup_s, dict(seconds=best, cpu_seconds=best_cpu,
                          all_seconds=calls, loadavg_1min=load), result


# On a shared machine a short call is often slowed by other processes taking
# the cores; ten tries within a minute usually include an undisturbed one.
_AUTO_SECONDS = 60.0
_AUTO_MAX = 10


def bench_golfjax(path: str, case: Case, prompts: list[list[int]],
                  repeats: int, decode_loops: int | None = None) -> dict[str, Any]:
    config, params = hf.load(path)
    cfg = sampling.SamplingConfig(
        temperature=1.0, max_new_tokens=case.new_tokens, group_size=case.group,
        prompt_buckets=(PROMPT_LEN,), batch_buckets=(case.batch,))
    if decode_loops is not None:
        cfg = cfg.replace(decode_loops=decode_loops)
    sampler = sampling.Sampler(config, cfg)
    key = jax.random.key(0)

    def run() -> sampling.Rollout:
        return jax.block_until_ready(sampler.generate(params, prompts, key))

    tokens, mask = sampling.pad_prompts(
        [np.asarray(p) for p in prompts], case.batch, PROMPT_LEN, cfg.pad_id)
    programs = sampler.programs(case.batch, PROMPT_LEN)

    def compile_only() -> Any:
        # The programs `run` uses, with every row a dummy (already done), so
        # the decode loop exits after its first step.
        cache, logits, routes = programs.prefill(params, tokens, mask)
        return jax.block_until_ready(programs.decode(
            params, cache, logits, tokens, mask, np.zeros(case.batch, bool),
            key, routes))

    warmup, figures, rollout = timed(run, repeats, compile_only)
    assert int(np.asarray(rollout.length_N).min()) == case.new_tokens
    assert dict(sampler.trace_counts) == {"prefill": 1, "decode": 1}

    # Prefill alone, to split the time (decode = total - prefill).
    _, prefill, _ = timed(lambda: jax.block_until_ready(
        programs.prefill(params, tokens, mask)), 3)
    best, prefill_s = figures["seconds"], prefill["seconds"]
    out = dict(**figures, warmup_seconds=warmup,
               tokens_per_s=case.tokens / best, prefill_seconds=prefill_s,
               decode_tokens_per_s=case.tokens / max(best - prefill_s, 1e-9))
    device = jax.devices()[0]
    return dict(out, platform=device.platform, device_kind=device.device_kind)


def bench_preset(args: argparse.Namespace) -> dict[str, Any]:
    """golfjax alone on random weights of `args.preset` (no checkpoint, no peers).

    B = the first of --batches prompts of exactly --prompt-len tokens, G =
    --group samples each, T = --new-tokens. Reports the first-call seconds
    (compiling prefill and decode, run with every row a dummy so the loop exits
    at once), the fastest timed call's tokens/s, prefill seconds, decode
    tokens/s and its fraction of the bandwidth bound, plus the compile-only
    figures of one decode step (`benchmarks/programs.py`). With
    --compile-only, only those, and the lower + compile seconds of the
    sampler's prefill and decode programs (`programs.sampler_programs`).
    --decode-layers sets `ModelConfig.decode_layers` (default: the preset's,
    "auto").
    """
    config = config_lib.get_preset(args.preset)
    if args.decode_layers:
        config = config.replace(decode_layers=args.decode_layers)
    batch, p, t = int(args.batches.split(",")[0]), args.prompt_len, args.new_tokens
    case = Case(args.preset, batch, args.group, t)
    compiled, step = programs.decode_step_program(config, case.rows, p, t,
                                                  decode_loops=args.decode_loops)
    if args.hlo_out:
        # The optimised program as the backend compiled it: where its bytes
        # go (copies, converts, fusions) can be read off it after the run.
        os.makedirs(os.path.dirname(os.path.abspath(args.hlo_out)), exist_ok=True)
        with open(args.hlo_out, "w") as f:
            f.write(compiled.as_text())
    out: dict[str, Any] = dict(dataclasses.asdict(case), prompt_len=p,
                               decode_layers=step["decode_layers"],
                               decode_step_compiled=step)
    if args.compile_only:
        out["programs_compiled"] = programs.sampler_programs(
            config, batch, args.group, p, t, decode_loops=args.decode_loops)
        return out
    cfg = sampling.SamplingConfig(
        temperature=1.0, max_new_tokens=t, group_size=args.group,
        prompt_buckets=(p,), batch_buckets=(batch,))
    if args.decode_loops is not None:
        cfg = cfg.replace(decode_loops=args.decode_loops)
    params = jax.block_until_ready(transformer.init_params(config, jax.random.key(0)))
    rng = np.random.RandomState(0)
    prompts = [rng.randint(1, config.vocab_size, p).tolist() for _ in range(batch)]
    tokens, mask = sampling.pad_prompts([np.asarray(x) for x in prompts], batch, p,
                                        cfg.pad_id)
    sampler = sampling.Sampler(config, cfg)
    programs_bp = sampler.programs(batch, p)
    key = jax.random.key(0)

    def first_call() -> Any:
        cache, logits, routes = programs_bp.prefill(params, tokens, mask)
        return jax.block_until_ready(programs_bp.decode(
            params, cache, logits, tokens, mask, np.zeros(batch, bool), key, routes))

    def run() -> sampling.Rollout:
        return jax.block_until_ready(sampler.generate(params, prompts, key))

    first_s, figures, rollout = timed(run, args.repeats, first_call)
    assert int(np.asarray(rollout.length_N).min()) == t
    _, prefill, _ = timed(lambda: jax.block_until_ready(
        programs_bp.prefill(params, tokens, mask)), 3)
    best, prefill_s = figures["seconds"], prefill["seconds"]
    decode_tokens_per_s = case.tokens / max(best - prefill_s, 1e-9)
    device = jax.devices()[0]
    out.update(figures, first_call_seconds=first_s, tokens_per_s=case.tokens / best,
               prefill_seconds=prefill_s, decode_tokens_per_s=decode_tokens_per_s,
               platform=device.platform, device_kind=device.device_kind)
    out.update(bandwidth_bound(config, case, device.device_kind, decode_tokens_per_s,
                               args.mem_bandwidth_gbs and args.mem_bandwidth_gbs * 1e9,
                               prompt_len=p))
    return out


def bandwidth_bound(config: Any, case: Case, device_kind: str,
                    decode_tokens_per_s: float,
                    bandwidth: float | None = None,
                    prompt_len: int = PROMPT_LEN) -> dict[str, Any]:
    """The memory-bandwidth bound on decode tokens/s and the fraction reached.

    Each decode step reads at least every weight once and every row's keys
    and values so far (`sampling.decode_bytes_per_step`): prompt bucket
    slots plus on average (T - 1) / 2 generated ones. `bandwidth` (bytes/s)
    defaults to the device kind's entry in `BANDWIDTH`.
    """
    bandwidth = bandwidth or BANDWIDTH.get(device_kind)
    if bandwidth is None:
        return dict(bandwidth_note=f"unknown device kind {device_kind!r};"
                    " pass --mem-bandwidth-gbs")
    slots = prompt_len + (case.new_tokens - 1) / 2
    step_bytes = sampling.decode_bytes_per_step(config, case.rows, slots)
    bound = case.rows * bandwidth / step_bytes
    return dict(device_kind=device_kind, bandwidth_bytes_per_s=bandwidth,
                bytes_per_decode_step=step_bytes, bound_tokens_per_s=bound,
                fraction_of_bandwidth_bound=decode_tokens_per_s / bound)


class _IdTokenizer:
    """Whitespace-separated token ids, so tunix sees exactly our prompt ids."""

    def encode(self, text: str, **_: Any) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int], **_: Any) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int | None:
        return None  # tunix prepends no bos when this is falsy.

    def eos_id(self) -> int:
        return -1

    def pad_id(self) -> int:
        return 0


def bench_tunix(path: str, case: Case, prompts: list[list[int]],
                repeats: int) -> dict[str, Any]:
    from tunix.generate import sampler as tunix_sampler
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params

    spec = MODELS[case.model]
    config = qwen2_model.ModelConfig(
        num_layers=spec["num_hidden_layers"], vocab_size=spec["vocab_size"],
        embed_dim=spec["hidden_size"], hidden_dim=spec["intermediate_size"],
        num_heads=spec["num_attention_heads"], head_dim=spec["head_dim"],
        num_kv_heads=spec["num_key_value_heads"],
        rope_theta=int(spec["rope_theta"]), norm_eps=1e-6,
        use_tied_embedding=True)
    model = qwen2_params.create_model_from_safe_tensors(path, config)
    sampler = tunix_sampler.Sampler(
        model, _IdTokenizer(), tunix_sampler.CacheConfig(
            cache_size=PROMPT_LEN + case.new_tokens,
            num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim))
    # No group sampling in tunix: each prompt is repeated G times.
    strings = [" ".join(map(str, p)) for p in prompts for _ in range(case.group)]

    def run() -> Any:
        out = sampler(strings, max_generation_steps=case.new_tokens,
                      max_prompt_length=PROMPT_LEN, temperature=1.0, top_p=1.0,
                      top_k=None, seed=0, eos_tokens=[-1])
        return out

    warmup_kind = ["compile-only"]

    def compile_only() -> Any:
        # tunix's own prefill and decode programs, compiled by running them on
        # the same shapes with every row marked done before the decode loop
        # (its loop exits at once). Internal API of tunix 0.1.7: if it
        # changes, fall back to a full warm-up run.
        try:
            sampler.eos_ids = jnp.array([_IdTokenizer().eos_id()])
            ids = np.stack([np.pad(p, (PROMPT_LEN - len(p), 0))
                            for p in prompts for _ in range(case.group)])
            state = sampler.init_sample_state(
                jnp.array(ids, jnp.int32), include_logits=False,
                total_sampling_steps=PROMPT_LEN + case.new_tokens,
                forbidden_token_ids=None, temperature=1.0, top_p=1.0,
                top_k=None, seed=jax.random.PRNGKey(0), beam_size=None,
                include_logprobs=False)
            weights = sampler._flattened_transformer_state
            state = sampler._compiled_prefill_fn(weights, state, None,
                                                 echo=False)
            state = state.replace(done=jnp.ones_like(state.done))
            jax.block_until_ready(sampler._compiled_decode_fn(weights, state))
        except Exception as e:  # noqa: BLE001
            warmup_kind[0] = f"full run (compile-only failed: {e})"
            run()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warmup, figures, out = timed(run, repeats, compile_only)
    lengths = {len(t) for t in out.tokens}
    assert lengths == {case.new_tokens}, lengths
    return dict(**figures, warmup_seconds=warmup, warmup=warmup_kind[0],
                tokens_per_s=case.tokens / figures["seconds"])


def bench_transformers(path: str, case: Case, prompts: list[list[int]],
                       repeats: int) -> dict[str, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32).eval()
    ids = np.zeros((case.batch, PROMPT_LEN), np.int64)
    mask = np.zeros((case.batch, PROMPT_LEN), np.int64)
    for row, p in enumerate(prompts):
        ids[row, PROMPT_LEN - len(p):] = p
        mask[row, PROMPT_LEN - len(p):] = 1
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)

    def run() -> Any:
        with torch.inference_mode():
            return model.generate(
                input_ids=ids_t, attention_mask=mask_t, do_sample=True,
                temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens,
                num_return_sequences=case.group, eos_token_id=None,
                pad_token_id=0)

    def short_run() -> Any:  # No compilation in eager PyTorch: 2 tokens warm up.
        with torch.inference_mode():
            return model.generate(
                input_ids=ids_t, attention_mask=mask_t, do_sample=True,
                temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=2,
                num_return_sequences=case.group, eos_token_id=None,
                pad_token_id=0)

    torch.manual_seed(0)
    warmup, figures, out = timed(run, repeats, short_run)
    assert out.shape == (case.rows, PROMPT_LEN + case.new_tokens), out.shape
    return dict(**figures, warmup_seconds=warmup,
                tokens_per_s=case.tokens / figures["seconds"],
                torch_threads=torch.get_num_threads())



ENGINES = {"golfjax": bench_golfjax, "tunix": bench_tunix,
           "transformers": bench_transformers}


def run_worker(engine: str, path: str, model: str, batches: list[int],
               group: int, new_tokens: int, repeats: int,
               decode_loops: int | None = None) -> list[dict[str, Any]]:
    """All batch sizes of one (engine, model): one process, one model load."""
    rows = []
    options = {} if decode_loops is None else {"decode_loops": decode_loops}
    for batch in batches:
        case = Case(model, batch, group, new_tokens)
        prompts = make_prompts(batch, MODELS[model]["vocab_size"])
        try:
            rows.append(ENGINES[engine](path, case, prompts, repeats, **options))
        except Exception as e:  # Reported, never faked.
            rows.append(dict(error=f"{type(e).__name__}: {e}"))
    return rows


def _spawn(engine: str, path: str, args: argparse.Namespace, batches: list[int],
           model: str) -> list[dict[str, Any]]:
    # A fresh process per engine: PyTorch's OpenMP pool and XLA's thread pool
    # slow each other down when they live in one process.
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine,
           "--checkpoint", path, "--models", model,
           "--batches", ",".join(map(str, batches)), "--group", str(args.group),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    if engine == "golfjax" and args.decode_loops is not None:
        cmd += ["--decode-loops", str(args.decode_loops)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return [dict(error=f"worker exited {proc.returncode}: {error}")] * len(batches)


_RESULT = "RESULT "


def _hf_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sampler.json")
    parser.add_argument("--models", default="tiny,20m")
    parser.add_argument("--batches", default="8,64")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls per case; 0: as many as fit in "
                        f"{_AUTO_SECONDS:.0f} s, 1 to {_AUTO_MAX}")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--mem-bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth (GB/s) for the bound; default "
                        "from the accelerator's device kind")
    parser.add_argument("--decode-loops", type=int, default=None,
                        help="golfjax's SamplingConfig.decode_loops (default: its"
                        " default); 1 reads the whole KV cache on every step")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model, B=8, 32 new tokens")
    parser.add_argument("--preset", choices=sorted(config_lib.PRESETS),
                        help="golfjax alone on random weights of this preset "
                        "(bench_preset); the peers need checkpoints")
    parser.add_argument("--prompt-len", type=int, default=128,
                        help="with --preset: P, the tokens of every prompt")
    parser.add_argument("--compile-only", action="store_true",
                        help="with --preset: only compiled figures, no run: the "
                        "decode step's (bytes accessed vs the roofline) and the "
                        "compile seconds of the prefill and decode programs")
    parser.add_argument("--decode-layers", choices=config_lib.DECODE_LAYERS,
                        help="with --preset: ModelConfig.decode_layers (default: "
                        "auto: scanned on TPU, unrolled on CPU and GPU)")
    parser.add_argument("--hlo-out",
                        help="with --preset: write the compiled decode step's "
                        "optimised HLO text to this file")
    parser.add_argument("--worker", choices=sorted(ENGINES),
                        help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.new_tokens = "tiny", "8", 32
    batches = [int(b) for b in args.batches.split(",")]
    if args.compile_only and not args.preset:
        parser.error("--compile-only needs --preset")
    if args.decode_layers and not args.preset:
        parser.error("--decode-layers needs --preset")
    if args.hlo_out and not args.preset:
        parser.error("--hlo-out needs --preset")
    if args.preset:
        result = bench_preset(args)
        report = dict(command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                      backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                      versions=_versions(), result=result)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(result, indent=1), flush=True)
        print(f"wrote {args.out}")
        return report
    if args.worker:
        rows = run_worker(args.worker, args.checkpoint, args.models, batches,
                          args.group, args.new_tokens, args.repeats, args.decode_loops)
        print(_RESULT + json.dumps(rows), flush=True)
        return {}

    engines = args.engines.split(",")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = make_checkpoint(name, tmp)
            rows = [dict(dataclasses.asdict(
                Case(name, b, args.group, args.new_tokens))) for b in batches]
            for engine in engines:
                for row, result in zip(rows, _spawn(engine, path, args, batches,
                                                    name)):
                    row[engine] = result
                    print(f"{name} B={row['batch']} G={row['group']} {engine}: "
                          f"{result}", flush=True)
            for row in rows:
                ours = row.get("golfjax", {}).get("tokens_per_s")
                for peer in ("tunix", "transformers"):
                    theirs = row.get(peer, {}).get("tokens_per_s")
                    if ours and theirs:
                        row[f"ratio_vs_{peer}"] = ours / theirs
                # On an accelerator (or with a given bandwidth), the fraction
                # of the memory-bandwidth bound that decode reaches.
                ours_row = row.get("golfjax", {})
                if ours and (args.mem_bandwidth_gbs or
                             ours_row.get("platform", "cpu") != "cpu"):
                    ours_row.update(bandwidth_bound(
                        hf.config_from_hf(_hf_config(path)),
                        Case(name, row["batch"], args.group, args.new_tokens),
                        ours_row["device_kind"], ours_row["decode_tokens_per_s"],
                        args.mem_bandwidth_gbs and args.mem_bandwidth_gbs * 1e9))
            results.extend(rows)

    report = dict(
        command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        backend=jax.default_backend(),
        device=jax.devices()[0].device_kind,
        host=dict(cpus=os.cpu_count(), machine=platform.machine(),
                  python=platform.python_version(),
                  # Other work on the machine skews every figure; recorded.
                  loadavg_1_5_15_before=load_before,
                  loadavg_1_5_15_after=os.getloadavg()),
        versions=_versions(),
        settings=dict(prompt_len=PROMPT_LEN, min_prompt_len=MIN_PROMPT_LEN,
                      temperature=1.0, top_p=1.0, top_k=0,
                      repeats=args.repeats, decode_loops=args.decode_loops),
        total_seconds=time.perf_counter() - started,
        results=results,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    _print_table(results)
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    return report


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("jax", "jaxlib", "flax", "google-tunix", "torch",
                 "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'model':>6} {'B x G':>7} {'golfjax':>10} {'tunix':>10} "
          f"{'transformers':>12} {'x tunix':>8} {'x hf':>6}   (tokens/s)")
    for row in results:
        def tps(engine: str) -> str:
            value = row.get(engine, {}).get("tokens_per_s")
            return f"{value:.0f}" if value else "-"

        def ratio(peer: str) -> str:
            value = row.get(f"ratio_vs_{peer}")
            return f"{value:.2f}" if value else "-"

        print(f"{row['model']:>6} {row['batch']:>3} x {row['group']:<2} "
              f"{tps('golfjax'):>10} {tps('tunix'):>10} "
              f"{tps('transformers'):>12} {ratio('tunix'):>8} "
              f"{ratio('transformers'):>6}")


if __name__ == "__main__":
    main()
