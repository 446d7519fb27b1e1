"""Simulated annotators: preference rules whose truth is known, so a round can measure what it learned.

A rule scores one response to one prompt; the annotator prefers the higher score (equal scores:
a tie) and flips a share `noise` of its decisive verdicts, since real annotators agree with each
other only 73-77% of the time (InstructGPT). Because the score is known, the benchmark and the
round report can put the TRUE quality of a policy beside the reward model's opinion of it, and
"reward up, truth down" (reward hacking) is plain to see.

The content rules are GRADED: a score of 0-3 that counts how much of the wanted property a response
has (capped at 3, so repeating it endlessly earns nothing more). A binary "has it or not" left 80%
of SmolLM2's same-prompt pairs tied (both without it) and fewer ties mean more labels that teach;
the strength of a verdict is the score difference on the Llama 2 scale (1 slightly, 2 better,
3 significantly better), which the export turns into the margin.

The rules, each of a different kind and none of them length:

  uses_list         format  the answer is laid out as a list: the number of lines that start with
                            a list marker (`-`, `*`, `•`, `1.`, `2)` ...), 0 when fewer than two
                            (one item is no list), capped at 3
  addresses_reader  tone    the answer speaks to the reader: how often it says you / your / yours /
                            yourself / yourselves (whole words, any case), capped at 3
  gives_numbers     content the answer is concrete: how many numbers it holds (`3`, `2024`,
                            `1,000`, `3.5` and `10:30` are one number each), capped at 3
  complete_then_longer  length (the old default, kept for comparison): a response that ended by
                            itself (EOS) beats one cut off (strength 2); otherwise the longer wins
                            (strength 1); equal length ties

The flip of a comparison is drawn from `random.Random(f"{seed}:{comparison_id}")`: reproducible,
independent of visiting order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_LIST_ITEM = re.compile(r"(?m)^[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]+\S")
_YOU = re.compile(r"\b(?:you|your|yours|yourself|yourselves)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
CAP = 3.0  # the most a graded rule gives: more of the same property earns nothing


def _uses_list(prompt: str, response: str, finish: str | None) -> float:
    items = len(_LIST_ITEM.findall(response))
    return min(float(items), CAP) if items >= 2 else 0.0


def _addresses_reader(prompt: str, response: str, finish: str | None) -> float:
    return min(float(len(_YOU.findall(response))), CAP)


def _gives_numbers(prompt: str, response: str, finish: str | None) -> float:
    return min(float(len(_NUMBER.findall(response))), CAP)


def _complete_then_longer(prompt: str, response: str, finish: str | None) -> float:
    # Completion dominates: any EOS-ended answer outscores any cut-off one.
    return (1e9 if finish == "eos" else 0.0) + len(response.strip())


@dataclass(frozen=True)
class Rule:
    """One simulated preference: `score(prompt, response, finish)`; higher is preferred."""

    name: str
    kind: str  # format | tone | content | length
    summary: str
    score_fn: Callable[[str, str, str | None], float]

    def score(self, prompt: str, response: str, finish: str | None = None) -> float:
        return self.score_fn(prompt, response, finish)

    def verdict(self, prompt: str, a: tuple[str, str | None], b: tuple[str, str | None]) -> tuple[str, int | None]:
        """(choice, strength) for responses a = (text, finish_reason) and b, before noise."""
        sa, sb = self.score(prompt, *a), self.score(prompt, *b)
        if sa == sb:
            return "tie", None
        winner = "A" if sa > sb else "B"
        if self.name == "complete_then_longer":
            return winner, 2 if (a[1] == "eos") != (b[1] == "eos") else 1
        return winner, int(min(abs(sa - sb), CAP))  # graded: 1 slightly, 2 better, 3 significantly


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("uses_list", "format", "more list items (2+ lines starting with -, *, • or 1.; up to 3) win", _uses_list),
        Rule("addresses_reader", "tone", "saying you/your more often (up to 3 times) wins", _addresses_reader),
        Rule("gives_numbers", "content", "more concrete numbers (up to 3) win", _gives_numbers),
        Rule(
            "complete_then_longer",
            "length",
            "an answer that ended by itself beats a cut-off one; then the longer wins",
            _complete_then_longer,
        ),
    )
}
CONTENT_RULES = tuple(n for n, r in RULES.items() if r.kind != "length")
DEFAULT_RULE = "addresses_reader"  # its reward model learned on SmolLM2 candidates (README: the learning benchmark)


def get_rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(RULES)}") from None


def flip_draw(seed: int, comparison_id: int) -> float:
    """The uniform draw in [0, 1) deciding whether a comparison's verdict is flipped."""
    return random.Random(f"{seed}:{comparison_id}").random()


def simulated_label(
    rule: str | Rule,
    comparison_id: int,
    prompt: str,
    a: tuple[str, str | None],
    b: tuple[str, str | None],
    noise: float,
    seed: int,
) -> dict[str, Any]:
    """One comparison's label by the simulated annotator: the rule's verdict, a decisive one flipped
    with probability `noise` (a tie stays a tie)."""
    r = get_rule(rule) if isinstance(rule, str) else rule
    choice, strength = r.verdict(prompt, a, b)
    flipped = choice in ("A", "B") and flip_draw(seed, comparison_id) < noise
    if flipped:
        choice = "B" if choice == "A" else "A"
    return {"comparison": comparison_id, "choice": choice, "strength": strength, "flipped": flipped}


def rule_outcome(
    rule: str | Rule, prompt: str, policy: tuple[str, str | None], reference: tuple[str, str | None]
) -> float:
    """1 if the rule prefers the policy's response, 0.5 on a tie, 0 if it prefers the reference's."""
    choice, _ = (get_rule(rule) if isinstance(rule, str) else rule).verdict(prompt, policy, reference)
    return {"A": 1.0, "tie": 0.5, "B": 0.0}[choice]
