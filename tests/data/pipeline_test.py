"""Tests for golfjax/data/pipeline.py."""

import json

import pytest

from golfjax.data import tfds_prompts
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.data.pipeline import LengthFilterStats, PromptPipeline
from golfjax.rewards import math as math_task
from golfjax.rewards.base import Problem

# The character tokenizer's template: "<|user|>" question "<|end|><|assistant|>",
# one token per character and one per marker, so a prompt is len(question) + 3.
TEMPLATE_TOKENS = 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


def _problems(n, long=()):
    """n problems "q<i>?" (ids 0..n-1); those in `long` get a 100-character question."""
    return [Problem(id=i, question=("x" * 100 if i in long else f"q{i}?"), answer=str(i))
            for i in range(n)]


def _pipeline(problems, tok, **kwargs):
    kwargs = {"batch_size": 2, "seed": 0, "max_prompt_tokens": 50, **kwargs}
    return PromptPipeline(problems, tok, **kwargs)


def test_batches_are_chat_templated_prompts(tok):
    problems = _problems(6)
    pipeline = _pipeline(problems, tok)
    batch = pipeline.next_batch()
    assert len(batch) == 2
    for example in batch:
        assert example.problem is problems[example.index]
        # Exactly what the RL loop renders for the sampler.
        assert example.prompt_tokens == tok.encode_prompt(example.problem.question)
        assert tok.decode(example.prompt_tokens, skip_special_tokens=False) == (
            f"<|user|>{example.problem.question}<|end|><|assistant|>")


def test_template_kwargs_reach_the_template(tmp_path):
    (tmp_path / "tok").mkdir()
    make_task_tokenizer(tmp_path / "tok")
    config_path = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if shout %}!{% endif %}")
    config_path.write_text(json.dumps(config))
    from golfjax.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "tok")
    batch = _pipeline(_problems(2), tok, template_kwargs={"shout": True}).next_batch()
    assert sorted(tok.decode(e.prompt_tokens) for e in batch) == ["q0?!", "q1?!"]


def test_epochs_cover_every_kept_prompt_once_in_new_orders(tok):
    pipeline = _pipeline(_problems(7), tok, batch_size=3)
    assert pipeline.batches_per_epoch == 2  # 7 // 3; one prompt sits out each epoch.
    epochs = [[i for _ in range(2) for i in pipeline.next()] for _ in range(4)]
    for epoch in epochs:
        assert len(set(epoch)) == 6 and set(epoch) <= set(range(7))
    assert len({tuple(e) for e in epochs}) == 4
    # The same seed draws the same batches; another seed others.
    assert _pipeline(_problems(7), tok, batch_size=3).next() == epochs[0][:3]
    assert _pipeline(_problems(7), tok, batch_size=3, seed=1).next() != epochs[0][:3]


def test_length_filter_drops_and_counts_long_prompts(tok):
    # Short prompts: len("q<i>?") + 3 <= 8 tokens; long ones: 103 tokens.
    pipeline = _pipeline(_problems(10, long=(1, 4, 5)), tok, max_prompt_tokens=103 - 1)
    assert pipeline.stats == LengthFilterStats(
        total=10, kept=7, dropped=3, max_prompt_tokens=102, longest_kept=len("q0?") + TEMPLATE_TOKENS)
    seen = {i for _ in range(20) for i in pipeline.next()}
    assert seen == {0, 2, 3, 6, 7, 8, 9}
    # At the limit itself a prompt is kept.
    assert _pipeline(_problems(10, long=(1,)), tok, max_prompt_tokens=103).stats.dropped == 0


def test_shards_partition_the_dataset(tok):
    problems = _problems(11)
    shards = [_pipeline(problems, tok, batch_size=1, shard_index=i, num_shards=3) for i in range(3)]
    seen = [{i for _ in range(len(range(s, 11, 3))) for i in shards[s].next()} for s in range(3)]
    assert [len(s) for s in seen] == [4, 4, 3]
    assert set().union(*seen) == set(range(11))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert [p.stats.total for p in shards] == [4, 4, 3]
    # The default shard is this process's: index 0 of 1 here.
    assert _pipeline(problems, tok).shard_index == 0
    assert _pipeline(problems, tok).identity["num_shards"] == 1


def test_shards_filter_their_own_prompts(tok):
    # Long prompts 0 and 2 both fall in shard 0 of 2 (positions 0, 2, 4).
    problems = _problems(6, long=(0, 2))
    stats = [_pipeline(problems, tok, batch_size=1, max_prompt_tokens=20, shard_index=i,
                       num_shards=2).stats for i in range(2)]
    assert [(s.total, s.kept, s.dropped) for s in stats] == [(3, 1, 2), (3, 3, 0)]


def test_state_restores_mid_epoch_exactly(tok):
    problems = _problems(9)
    pipeline = _pipeline(problems, tok, batch_size=2, seed=5)
    for _ in range(3):  # Into the second of 4 batches per epoch... and past it.
        pipeline.next()
    state = json.loads(json.dumps(pipeline.state()))  # As the checkpoint stores it.
    expected = [pipeline.next_batch() for _ in range(7)]  # Across two epoch boundaries.
    resumed = _pipeline(problems, tok, batch_size=2, seed=5)
    resumed.restore(state)
    assert [resumed.next_batch() for _ in range(7)] == expected
    # Restoring the start replays from the beginning.
    fresh = _pipeline(problems, tok, batch_size=2, seed=5)
    start = fresh.state()
    first = fresh.next()
    fresh.next()
    fresh.restore(start)
    assert fresh.next() == first


@pytest.mark.parametrize("change, key", [
    ({"batch_size": 3}, "batch_size"),
    ({"seed": 6}, "seed"),
    ({"max_prompt_tokens": 40}, "max_prompt_tokens"),
    ({"shard_index": 0, "num_shards": 2}, "num_shards"),
])
def test_restoring_another_pipelines_state_names_the_key(tok, change, key):
    state = _pipeline(_problems(9), tok, batch_size=2, seed=5).state()
    other = _pipeline(_problems(9), tok, **{"batch_size": 2, "seed": 5, **change})
    with pytest.raises(ValueError, match=f"saved with {key}=.* this pipeline has {key}="):
        other.restore(state)


def test_restoring_a_state_of_another_dataset_size_fails(tok):
    state = _pipeline(_problems(9), tok).state()
    with pytest.raises(ValueError, match="saved with num_problems=9, but this pipeline has num_problems=10"):
        _pipeline(_problems(10), tok).restore(state)
    with pytest.raises(ValueError, match="bad prompt pipeline state .*'epoch'"):
        _pipeline(_problems(9), tok).restore({"epoch": 0, "position": 2})


@pytest.mark.parametrize("problems, kwargs, message", [
    ([], {}, "the dataset is empty"),
    (_problems(2), {"shard_index": 2, "num_shards": 3}, "shard 2 of 3 is empty: the dataset has only 2"),
    (_problems(4, long=(0, 1, 2, 3)), {"max_prompt_tokens": 20},
     "shard 0 of 1 keeps 0 of 4 prompts \\(4 are longer than max_prompt_tokens=20\\)"),
    (_problems(4, long=(0, 1, 2)), {"max_prompt_tokens": 20},
     "keeps 1 of 4 prompts .* fewer than batch_size=2"),
    (_problems(4), {"shard_index": 1, "num_shards": 1}, "shard_index=1; expected in \\[0, 1\\)"),
    (_problems(4), {"batch_size": 0}, "batch_size=0"),
])
def test_empty_data_fails_at_construction(tok, problems, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _pipeline(problems, tok, **kwargs)


def test_pipeline_over_a_prepared_dataset(tmp_path, tok):
    path = tmp_path / "train.jsonl"
    lines = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(9)]
    lines[4]["question"] = "Long " * 100
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    tfds_prompts.prepare("gsm8k", tmp_path / "ds", train_path=path)
    problems = math_task.MathTask(dataset=tmp_path / "ds").load("train")
    pipeline = _pipeline(problems, tok, batch_size=4, max_prompt_tokens=200)
    assert (pipeline.stats.kept, pipeline.stats.dropped) == (8, 1)
    epoch = pipeline.next_batch() + pipeline.next_batch()
    assert sorted(e.index for e in epoch) == [0, 1, 2, 3, 5, 6, 7, 8]
    for e in epoch:
        assert e.problem.answer == str(2 * e.index)
        assert tok.decode(e.prompt_tokens) == (
            f"What is {e.index} + {e.index}?" + math_task.PROMPT_SUFFIX)


def test_gather_needs_one_shard_per_process(tok):
    # One process: gathering is the identity; a shard other than the process's is refused.
    assert _pipeline(_problems(6), tok, gather=True).next() == _pipeline(_problems(6), tok).next()
    with pytest.raises(ValueError, match="gather=True needs one shard per process"):
        _pipeline(_problems(6), tok, gather=True, shard_index=0, num_shards=2)
