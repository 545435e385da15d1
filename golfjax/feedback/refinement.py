"""Group-level aggregation: one refinement prompt per prompt (GOLF step 3).

Specification: docs/algorithms.md#golf-refinement. For each prompt, the
group's failed attempts (all attempts with `include="all"`) with their scores
and critiques, shortest first, are added while the rendered prompt fits the
token budget; the prompt holds the problem, those attempts and instructions.

The user message is `problem.question`, then (if any attempt fits) the intro and
the attempts, then the instructions; it is rendered with the SAME chat template
and `template_kwargs` (thinking mode) as the rollout, with the generation prompt.

Budget rules (the released code's defects avoided, see
docs/algorithms.md#golf-differences):
- the budget counts every token of the rendered prompt: chat template, problem,
  attempts, instructions and generation prompt;
- attempts are taken shortest first (response tokens, ties by position in the
  group) and an attempt that does not fit is dropped WHOLE (later ones may still
  fit); nothing is ever truncated, least of all from the right;
- if the problem and instructions alone exceed the budget, `on_overflow="raise"`
  (default) raises ValueError; "flag" returns that prompt untruncated with
  `over_budget=True`, for the loop to drop or treat as nothing to refine.

Pasted attempts and critiques have the tokenizer's special token strings removed
(golfjax/feedback/text.py), so a response cannot forge a turn boundary.

Nothing to refine: `num_attempts == 0` (every attempt succeeded, or none fit);
the loop gives that refinement group reward 0 (docs/algorithms.md#golf-refinement). A prompt
is still returned so that every prompt has a refinement group of fixed shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from golfjax.feedback.text import strip_special_tokens
from golfjax.rewards.base import Problem
from golfjax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class RefinementTemplate:
    """The text around the attempts; `attempt` is a `str.format` template with
    fields `index` (1-based), `score`, `response`, `critique`."""

    intro: str
    attempt: str
    instructions: str


# Instructions as docs/algorithms.md#golf-refinement lists them: find what was
# wrong, keep the valid steps, do not merely copy an answer, self-contained,
# never mention attempts.
DEFAULT_TEMPLATE = RefinementTemplate(
    intro="\n\nBelow are previous attempts at this problem, each with its score and"
          " feedback.\n",
    attempt="\nAttempt {index} (score {score}):\n{response}\nFeedback: {critique}\n",
    instructions=(
        "\nWrite a new, complete solution to the problem. Use the attempts and the"
        " feedback to find what was wrong, keep the steps that were valid, and fix the"
        " errors; do not merely copy an answer from the feedback without working it"
        " out. Your response must be self-contained, as if it were the first answer:"
        " never mention the attempts or the feedback."),
)

# For the built-in tasks' character-level models, where every character is a
# token and every token of a prompt costs compute: the same structure (problem,
# numbered attempts with score and critique, an instruction) in a fifth of the
# default template's tokens.
COMPACT_TEMPLATE = RefinementTemplate(
    intro="\nAttempts:\n",
    attempt="{index}. ({score}) {response} {critique}\n",
    instructions="Answer again.",
)

TEMPLATES = {"default": DEFAULT_TEMPLATE, "compact": COMPACT_TEMPLATE}
INCLUDE = ("failed", "all")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One sample of the group: its response text, reward and critique."""

    response: str
    reward: float
    critique: str


@dataclasses.dataclass(frozen=True)
class RefinementPrompt:
    """A rendered refinement prompt.

    Attributes:
      tokens: the prompt ids (chat template and generation prompt included).
      text: the rendered prompt text that `tokens` encode.
      num_attempts: attempts shown; 0 means nothing to refine (reward 0).
      num_dropped: eligible attempts left out because they did not fit.
      over_budget: the prompt exceeds the budget even without attempts (only
        returned with `on_overflow="flag"`).
    """

    tokens: list[int]
    text: str
    num_attempts: int
    num_dropped: int
    over_budget: bool = False

    @property
    def nothing_to_refine(self) -> bool:
        return self.num_attempts == 0


def format_score(reward: float) -> str:
    """"0", "1", "0.5": short, since every character may be a token."""
    return f"{reward:g}"


def render_refinement_message(question: str, attempts: Sequence[Attempt],
                              template: RefinementTemplate = DEFAULT_TEMPLATE) -> str:
    """The user message for `attempts` in the given order (no budget, no cleaning)."""
    parts = [question]
    if attempts:
        parts.append(template.intro)
        parts += [template.attempt.format(index=i + 1, score=format_score(a.reward),
                                          response=a.response, critique=a.critique)
                  for i, a in enumerate(attempts)]
    parts.append(template.instructions)
    return "".join(parts)


def build_refinement_prompt(
        problem: Problem,
        attempts: Sequence[Attempt],
        tokenizer: Tokenizer,
        *,
        max_prompt_tokens: int,
        include: str = "failed",
        template: RefinementTemplate = DEFAULT_TEMPLATE,
        template_kwargs: Mapping[str, Any] | None = None,
        success_reward: float = 1.0,
        on_overflow: str = "raise",
) -> RefinementPrompt:
    """The refinement prompt of one group (rules in the module docstring).

    Args:
      problem: the ORIGINAL problem.
      attempts: the group's G samples, in group order.
      tokenizer: the policy's tokenizer (its chat template renders the prompt).
      max_prompt_tokens: the budget, in tokens of the whole rendered prompt.
      include: "failed" (attempts with reward < success_reward; GOLF's default)
        or "all".
      template: the surrounding text (`DEFAULT_TEMPLATE`, `COMPACT_TEMPLATE`).
      template_kwargs: the rollout's chat-template variables (e.g.
        `enable_thinking`), so the refinement runs in the same thinking mode.
      success_reward: the reward at or above which an attempt counts as correct.
      on_overflow: "raise" or "flag" (module docstring).
    """
    if include not in INCLUDE:
        raise ValueError(f"include must be one of {INCLUDE}, got {include!r}")
    if on_overflow not in ("raise", "flag"):
        raise ValueError(f"on_overflow must be 'raise' or 'flag', got {on_overflow!r}")
    kwargs = dict(template_kwargs or {})

    def render(shown: Sequence[Attempt]) -> tuple[str, list[int]]:
        message = render_refinement_message(problem.question, shown, template)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True,
            tokenize=False, **kwargs)
        return text, tokenizer.encode(text)

    eligible = [
        Attempt(strip_special_tokens(a.response, tokenizer), float(a.reward),
                strip_special_tokens(a.critique, tokenizer))
        for a in attempts if include == "all" or a.reward < success_reward
    ]
    lengths = [len(tokenizer.encode(a.response)) for a in eligible]
    order = sorted(range(len(eligible)), key=lambda i: (lengths[i], i))

    text, tokens = render([])
    if len(tokens) > max_prompt_tokens:
        if on_overflow == "raise":
            raise ValueError(
                f"refinement prompt for problem {problem.id} needs {len(tokens)} tokens"
                f" without any attempt (problem, instructions and chat template), more"
                f" than max_prompt_tokens={max_prompt_tokens}")
        return RefinementPrompt(tokens, text, 0, len(eligible), over_budget=True)

    shown: list[Attempt] = []
    for i in order:
        trial_text, trial_tokens = render(shown + [eligible[i]])
        if len(trial_tokens) <= max_prompt_tokens:
            shown.append(eligible[i])
            text, tokens = trial_text, trial_tokens
    return RefinementPrompt(tokens, text, len(shown), len(eligible) - len(shown))


def build_refinement_prompts(
        problems: Sequence[Problem],
        responses: Sequence[str],
        rewards: Sequence[float],
        critiques: Sequence[str],
        tokenizer: Tokenizer,
        *,
        group_size: int,
        **kwargs: Any,
) -> list[RefinementPrompt]:
    """`build_refinement_prompt` for B groups whose B*G rows are prompt-major.

    Args:
      problems: the B original problems.
      responses, rewards, critiques: B*G rows, row b*G + g = sample g of prompt b.
      group_size: G.
      **kwargs: passed to `build_refinement_prompt` (max_prompt_tokens, ...).
    """
    rows = len(problems) * group_size
    if not len(responses) == len(rewards) == len(critiques) == rows:
        raise ValueError(
            f"expected {len(problems)} x {group_size} = {rows} responses, rewards and"
            f" critiques; got {len(responses)}, {len(rewards)}, {len(critiques)}")
    prompts = []
    for b, problem in enumerate(problems):
        rows_b = range(b * group_size, (b + 1) * group_size)
        attempts = [Attempt(responses[i], rewards[i], critiques[i]) for i in rows_b]
        prompts.append(build_refinement_prompt(problem, attempts, tokenizer, **kwargs))
    return prompts
