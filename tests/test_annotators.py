"""The simulated annotators (rlhf/annotators.py): each rule's verdicts checked by hand, ties, strengths,
the seeded noise flips, and the outcome of a policy against its reference."""

from __future__ import annotations

import pytest

from rlhf.annotators import (
    CONTENT_RULES,
    DEFAULT_RULE,
    RULES,
    flip_draw,
    get_rule,
    rule_outcome,
    simulated_label,
)

LISTS = [  # (text, score): the number of list items, capped at 3
    ("- a\n- b", 2.0),
    ("1. a\n2) b", 2.0),
    ("* first\n• second", 2.0),
    ("Steps:\n  - indented\n  - items\nthat's all", 2.0),
    ("- a\n\n- b", 2.0),  # a blank line between items
    ("10. ten\n11. eleven", 2.0),
    ("- a\n- b\n- c", 3.0),
    ("1. a\n2. b\n3. c\n4. d\n5. e", 3.0),  # capped
]
NOT_LISTS = [
    "- a",  # one item is not a list
    "",
    "plain prose, no markers",
    "-a\n-b",  # a marker needs a space after it
    "Here:\n- a\nand - b",  # the second marker is not at a line start
    "a well-known - fact\nand 1. more",
    "1.5 litres\n2.5 litres",  # a decimal is not a numbered item
]


@pytest.mark.parametrize("text, score", LISTS)
def test_uses_list_counts_items(text: str, score: float) -> None:
    assert RULES["uses_list"].score("prompt", text) == score


@pytest.mark.parametrize("text", NOT_LISTS)
def test_uses_list_false(text: str) -> None:
    assert RULES["uses_list"].score("prompt", text) == 0.0


@pytest.mark.parametrize(
    "text, score",
    [
        ("you", 1.0),
        ("Your answer is here.", 1.0),
        ("That one is YOURS.", 1.0),
        ("Ask yourself why.", 1.0),
        ("Help yourselves", 1.0),
        ("you'll see", 1.0),  # "you" before an apostrophe is a whole word
        ("If you ask, your friend tells you.", 3.0),
        ("you, you, you and you", 3.0),  # capped at 3
        ("You and your", 2.0),
        ("In my youth", 0.0),
        ("the young bayou", 0.0),
        ("One should ask oneself.", 0.0),
        ("", 0.0),
    ],
)
def test_addresses_reader(text: str, score: float) -> None:
    assert RULES["addresses_reader"].score("prompt", text) == score


@pytest.mark.parametrize(
    "text, score",
    [
        ("3 apples", 1.0),
        ("in 2024", 1.0),
        ("x1", 1.0),  # a digit anywhere counts
        ("version-0", 1.0),
        ("1,000 people at 10:30 paid 3.5 each", 3.0),  # separators inside a number: one number each
        ("1, 2, 3, 4", 3.0),  # capped at 3
        ("2 cats and 3 dogs", 2.0),
        ("three apples", 0.0),
        ("no numbers here", 0.0),
        ("", 0.0),
    ],
)
def test_gives_numbers(text: str, score: float) -> None:
    assert RULES["gives_numbers"].score("prompt", text) == score


def test_content_rules_strength_is_the_score_difference() -> None:
    cases = {  # rule: (score 3, score 2, score 1 or the nearest below, score 0)
        "uses_list": ("- a\n- b\n- c", "- a\n- b", None, "a and b"),
        "addresses_reader": ("you, your, yours", "you and your", "you can", "one can"),
        "gives_numbers": ("1, 2 or 3 ways", "2 or 3 ways", "2 ways", "two ways"),
    }
    for name, (three, two, one, zero) in cases.items():
        rule = RULES[name]
        # 3 vs 0: significantly better (3), either side.
        assert rule.verdict("p", (three, "eos"), (zero, "eos")) == ("A", 3), name
        assert rule.verdict("p", (zero, "eos"), (three, "eos")) == ("B", 3), name
        # 2 vs 0: better (2); 3 vs 2: slightly better (1).
        assert rule.verdict("p", (two, "eos"), (zero, "eos")) == ("A", 2), name
        assert rule.verdict("p", (two, "eos"), (three, "eos")) == ("B", 1), name
        if one is not None:
            assert rule.verdict("p", (one, "eos"), (zero, "eos")) == ("A", 1), name
            assert rule.verdict("p", (one, "eos"), (three, "eos")) == ("B", 2), name
        # Length and finish reason do not matter to a content rule.
        assert rule.verdict("p", (two, "length"), (zero + " and much longer", "eos")) == ("A", 2), name
        assert rule.verdict("p", (zero, "eos"), (zero + " too", "eos")) == ("tie", None), name
        assert rule.verdict("p", (two, "eos"), (two, "length")) == ("tie", None), name


def test_complete_then_longer_verdicts() -> None:
    v = RULES["complete_then_longer"].verdict
    # 1) ended by itself beats cut off, whatever the lengths: strength 2.
    assert v("p", ("short", "eos"), ("a much longer answer", "length")) == ("A", 2)
    assert v("p", ("a much longer answer", "length"), ("short", "eos")) == ("B", 2)
    # 2) both cut off (or both ended): the longer stripped text wins, strength 1.
    assert v("p", ("abc", "length"), ("abcdef", "length")) == ("B", 1)
    assert v("p", ("abcdef", "eos"), ("abc", "eos")) == ("A", 1)
    # 3) "  ab " strips to 2 characters, like "xy": a tie (no strength).
    assert v("p", ("  ab ", "eos"), ("xy", "eos")) == ("tie", None)


def test_rule_registry() -> None:
    assert DEFAULT_RULE == "addresses_reader" and DEFAULT_RULE in RULES
    assert set(RULES) == {"uses_list", "addresses_reader", "gives_numbers", "complete_then_longer"}
    assert CONTENT_RULES == ("uses_list", "addresses_reader", "gives_numbers")
    assert {RULES[n].kind for n in CONTENT_RULES} == {"format", "tone", "content"}
    assert get_rule("gives_numbers") is RULES["gives_numbers"]
    with pytest.raises(ValueError, match="unknown rule 'shorter'; choose one of uses_list"):
        get_rule("shorter")


def test_noise_flips_with_the_seeded_draw() -> None:
    # random.Random("0:<id>").random(): id 1 -> 0.1894, 2 -> 0.4752, 3 -> 0.3220, 4 -> 0.6719.
    assert [round(flip_draw(0, i), 4) for i in (1, 2, 3, 4)] == [0.1894, 0.4752, 0.322, 0.6719]
    list_b = (("just prose", "eos"), ("- a\n- b", "eos"))  # uses_list says B

    def choices(noise: float, seed: int = 0, ids=(1, 2, 3, 4)) -> list[str]:
        return [simulated_label("uses_list", i, "p", *list_b, noise=noise, seed=seed)["choice"] for i in ids]

    # noise 0.3: draws below 0.3 flip -> id 1 (0.189) flips to A; ids 2 (0.475), 3 (0.322), 4 (0.672) stay B.
    assert choices(0.3) == ["A", "B", "B", "B"]
    # noise 0.5: ids 1, 2, 3 flip; 4 stays.
    assert choices(0.5) == ["A", "A", "A", "B"]
    assert set(choices(0.0, ids=range(1, 50))) == {"B"}
    assert set(choices(1.0, ids=range(1, 50))) == {"A"}
    # Another seed, other draws: seed 7 gives id 1 -> 0.989 (no flip at 0.5), id 2 -> 0.251 (flip).
    assert choices(0.5, seed=7, ids=(1, 2)) == ["B", "A"]
    # A flipped label keeps the verdict's strength and says it was flipped.
    assert simulated_label("uses_list", 1, "p", *list_b, noise=0.3, seed=0) == {
        "comparison": 1,
        "choice": "A",
        "strength": 2,
        "flipped": True,
    }
    # The length rule's strength 1 survives a flip too.
    longer_b = (("abc", "length"), ("abcdef", "length"))
    lab = simulated_label(RULES["complete_then_longer"], 1, "p", *longer_b, noise=0.3, seed=0)
    assert (lab["choice"], lab["strength"], lab["flipped"]) == ("A", 1, True)


def test_flips_are_reproducible_and_independent_of_order() -> None:
    pair = (("- a\n- b", "eos"), ("prose", "eos"))
    forward = {i: simulated_label("uses_list", i, "p", *pair, noise=0.4, seed=3) for i in range(1, 40)}
    backward = {i: simulated_label("uses_list", i, "p", *pair, noise=0.4, seed=3) for i in reversed(range(1, 40))}
    assert forward == backward
    flipped = sum(x["flipped"] for x in forward.values())
    assert 0 < flipped < 39  # some, not all
    assert sum(x["choice"] == "B" for x in forward.values()) == flipped


@pytest.mark.parametrize("name", list(RULES))
def test_ties_are_never_flipped(name: str) -> None:
    tie = (("ab", "eos"), ("xy", "eos"))  # the same score under every rule
    for i in range(1, 30):
        assert simulated_label(name, i, "p", *tie, noise=1.0, seed=0) == {
            "comparison": i,
            "choice": "tie",
            "strength": None,
            "flipped": False,
        }


def test_rule_outcome_policy_against_reference() -> None:
    listed, prose = ("- a\n- b", "eos"), ("prose", "eos")
    assert rule_outcome("uses_list", "p", listed, prose) == 1.0
    assert rule_outcome("uses_list", "p", prose, listed) == 0.0
    assert rule_outcome("uses_list", "p", listed, ("* c\n* d", "length")) == 0.5
    assert rule_outcome(RULES["gives_numbers"], "p", ("2", "eos"), ("two", "eos")) == 1.0
    # The length rule reads the finish reason: ended beats cut off, else the longer wins.
    assert rule_outcome("complete_then_longer", "p", ("abc", "eos"), ("abcdef", "length")) == 1.0
    assert rule_outcome("complete_then_longer", "p", ("abc", "eos"), ("abcdef", "eos")) == 0.0
