"""A model judge: a golfjax model writes the critique (GOLF step 2, "an LLM judge").

The judge renders one prompt per failed row from a template (the problem, the
reference answer, the response), applies the judge model's chat template and
hands all prompts to `generate_fn` at once, a callable the loop builds from the
sampler (`list of prompt token lists -> list of response texts`), so this file
does not depend on the sampler's internals. The judge model's parameters are
explicit: golfjax/loops/golf.py binds the parameters (and key) of each call
of a `ModelGenerateFn` into the `generate_fn` of a judge made for that call. The output must read

    Critique: <text>
    Verdict: correct | incorrect

(case-insensitive, markdown bold allowed; a `<think>...</think>` block before it
is ignored; the last "Critique:/Verdict:" pair wins). The reward still comes from
the task's verifier; the verdict is reported in `Judgement` for metrics.

Failure mode, chosen by `on_parse_error`:
- "raise" (default): `JudgeParseError` naming the row and quoting the output, so
  a judge that does not follow the format is noticed at the first step;
- "fallback": the critique is `FALLBACK_CRITIQUE` ("Incorrect, try again.", the
  simple answer critic's text) and `num_parse_errors` counts the failures, for
  long runs with a small judge where an occasional bad output must not stop
  training.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

from golfjax.feedback.critics import CORRECT, TRY_AGAIN, Critic, check_rows
from golfjax.feedback.text import strip_special_tokens
from golfjax.rewards.base import Problem
from golfjax.tokenizer import Tokenizer

GenerateFn = Callable[[list[list[int]]], list[str]]
# (params, prompt token lists, key) -> response texts: the judge model itself.
ModelGenerateFn = Callable[[Any, list[list[int]], Any], list[str]]

JUDGE_TEMPLATE = (
    "You are checking a solution to a problem.\n\n"
    "Problem:\n{question}\n\n"
    "Reference answer: {answer}\n\n"
    "Solution to check:\n{response}\n\n"
    "Explain briefly what is wrong in the solution and how to fix it, without"
    " writing the full solution. Reply in exactly this format:\n"
    "Critique: <your critique>\n"
    "Verdict: <correct or incorrect>"
)
FALLBACK_CRITIQUE = TRY_AGAIN
ON_PARSE_ERROR = ("raise", "fallback")

_THINK = re.compile(r"^.*</think>", re.DOTALL)
_JUDGEMENT = re.compile(
    r"critique\s*\**\s*:\s*\**(?P<critique>.*?)\**\s*verdict\s*\**\s*:\s*\**\s*\[?\s*"
    r"(?P<verdict>incorrect|correct)\b",
    re.IGNORECASE | re.DOTALL,
)


class JudgeParseError(ValueError):
    """The judge's output for `row` has no "Critique: ... Verdict: ..." block."""

    def __init__(self, row: int, output: str) -> None:
        shown = output if len(output) <= 500 else output[:250] + " [...] " + output[-250:]
        super().__init__(
            f"model judge output for row {row} does not parse: expected 'Critique: ..."
            f" Verdict: correct|incorrect', got {shown!r}")
        self.row, self.output = row, output


@dataclasses.dataclass(frozen=True)
class Judgement:
    """One parsed judge output: `verdict` is "correct"/"incorrect", None if unparsed."""

    critique: str
    verdict: str | None
    parsed: bool
    output: str


def parse_judgement(output: str) -> tuple[str, str] | None:
    """(critique, verdict) from a judge output, or None when it does not parse."""
    text = _THINK.sub("", output)
    matches = list(_JUDGEMENT.finditer(text))
    if not matches:
        return None
    critique = matches[-1]["critique"].strip().strip("*").strip()
    if not critique:
        return None
    return critique, matches[-1]["verdict"].lower()


class ModelJudge(Critic):
    """Critiques failed rows with a model (see the module docstring).

    Args:
      generate_fn: prompt token lists -> response texts (the judge model through
        the sampler, with its own stop tokens and length limit).
      tokenizer: the judge model's tokenizer (its chat template renders prompts).
      template: a `str.format` template with fields `question`, `answer`,
        `response`; the user message of the judge prompt.
      template_kwargs: extra chat-template variables (e.g. `enable_thinking`).
      on_parse_error: "raise" or "fallback" (module docstring).
      max_prompt_tokens: if set, a response too long for the judge's prompt keeps
        only its end (where the final answer is), after a "[...]" marker.
    """

    def __init__(self, generate_fn: GenerateFn, tokenizer: Tokenizer, *,
                 template: str = JUDGE_TEMPLATE,
                 template_kwargs: Mapping[str, Any] | None = None,
                 on_parse_error: str = "raise",
                 max_prompt_tokens: int | None = None) -> None:
        if on_parse_error not in ON_PARSE_ERROR:
            raise ValueError(
                f"ModelJudge on_parse_error must be one of {ON_PARSE_ERROR}, got"
                f" {on_parse_error!r}")
        self.generate_fn, self.tokenizer, self.template = generate_fn, tokenizer, template
        self.template_kwargs = dict(template_kwargs or {})
        self.on_parse_error, self.max_prompt_tokens = on_parse_error, max_prompt_tokens
        self.num_parse_errors = 0

    def _render(self, problem: Problem, response: str) -> list[int]:
        content = self.template.format(question=problem.question, answer=problem.answer,
                                       response=response)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True,
            tokenize=True, **self.template_kwargs)

    def build_prompt(self, problem: Problem, response: str) -> list[int]:
        """The judge's prompt tokens for one response (control strings removed)."""
        response = strip_special_tokens(response, self.tokenizer)
        tokens = self._render(problem, response)
        limit = self.max_prompt_tokens
        if limit is None or len(tokens) <= limit:
            return tokens
        overhead = len(self._render(problem, "[...]"))
        if overhead > limit:
            raise ValueError(
                f"judge prompt for problem {problem.id} needs {overhead} tokens without"
                f" the response; max_prompt_tokens is {limit}")
        ids = self.tokenizer.encode(response)
        keep = limit - overhead
        # Re-tokenising the cut text can merge differently; shrink until it fits.
        while keep > 0:
            tokens = self._render(problem, "[...]" + self.tokenizer.decode(ids[-keep:]))
            if len(tokens) <= limit:
                return tokens
            keep -= max(1, len(tokens) - limit)
        return self._render(problem, "[...]")

    def judge(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        """Judges every row with one `generate_fn` call."""
        if len(problems) != len(responses):
            raise ValueError(
                f"judge needs parallel rows: {len(problems)} problems, {len(responses)}"
                " responses")
        if not problems:
            return []
        prompts = [self.build_prompt(p, r) for p, r in zip(problems, responses)]
        outputs = list(self.generate_fn(prompts))
        if len(outputs) != len(prompts):
            raise ValueError(
                f"generate_fn returned {len(outputs)} outputs for {len(prompts)} prompts")
        judgements = []
        for row, output in enumerate(outputs):
            parsed = parse_judgement(output)
            if parsed is None:
                if self.on_parse_error == "raise":
                    raise JudgeParseError(row, output)
                self.num_parse_errors += 1
                judgements.append(Judgement(FALLBACK_CRITIQUE, None, False, output))
            else:
                judgements.append(Judgement(parsed[0], parsed[1], True, output))
        return judgements

    def critique(self, problems: Sequence[Problem], responses: Sequence[str],
                 rewards: Sequence[float]) -> list[str]:
        """Judges only the failed rows; correct rows get `CORRECT`.

        A `JudgeParseError`'s row is the index into `problems`, not into the
        failed subset.
        """
        check_rows(problems, responses, rewards)
        failed = [i for i, r in enumerate(rewards) if r < self.success_reward]
        out = [CORRECT] * len(problems)
        try:
            judgements = self.judge([problems[i] for i in failed], [responses[i] for i in failed])
        except JudgeParseError as e:
            raise JudgeParseError(failed[e.row], e.output) from None
        for i, judgement in zip(failed, judgements):
            out[i] = judgement.critique
        return out
