"""Built-in verifiable tasks and the gold checkers (reward_models.rules)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from alignment.data import DataConfig, load
from alignment.data.tasks import FAMILIES, generate
from reward_models.rules import RuleReward, extract_final_number, gsm8k_score, score_gold, score_task
from tests.helpers import SHARED_DATA


def test_reference_passes_and_rejected_fails_for_every_family() -> None:
    instances = generate(900, seed=7)
    assert Counter(i["source"] for i in instances) == {family: 100 for family in FAMILIES}
    for item in instances:
        assert score_task(item["gold"], item["reference"]) == 1.0, item
        assert score_task(item["gold"], item["rejected"]) < 1.0, item


def test_determinism_and_distinct_seeds() -> None:
    assert generate(50, seed=1) == generate(50, seed=1)
    train = {i["prompt"] for i in generate(900, seed=1)}
    test = {i["prompt"] for i in generate(180, seed=2, split="test")}
    assert not train & test  # held-out prompts never appear in any training set
    assert len(test) > 100
    assert len({i["id"] for i in generate(200, seed=1)}) == 200
    with pytest.raises(ValueError, match="unknown task families"):
        generate(3, families=["poetry"])


def test_rows_of_each_kind_are_valid_canonical_rows() -> None:
    for kind in ("sft", "preference", "prompt"):
        result = load(
            DataConfig(source="builtin:tasks", task_count=45, task_families=["arithmetic", "lowercase"]), kind
        )
        assert len(result.rows) == 45 and not result.rejects
        assert {row["source"] for row in result.rows} == {"arithmetic", "lowercase"}
        assert all(row["gold"]["type"] == "task" for row in result.rows)


@pytest.mark.parametrize(
    ("gold", "completion", "expected"),
    [
        ({"family": "arithmetic", "answer": 42}, "The answer is 42.", 1.0),
        ({"family": "arithmetic", "answer": 42}, "41", 0.0),
        ({"family": "arithmetic", "answer": 1200}, "1,200", 1.0),
        ({"family": "word_count", "n": 5}, "  one two three four five ", 1.0),
        ({"family": "word_count", "n": 5}, "one two three four five six seven", 0.6),
        ({"family": "word_count", "n": 4}, "a b c d e f g h i j", 0.0),
        ({"family": "lowercase"}, "all lower, fine.", 1.0),
        ({"family": "lowercase"}, "All lower", 0.0),
        ({"family": "lowercase"}, "1234", 0.0),
        ({"family": "uppercase"}, "LOUD WORDS!", 1.0),
        ({"family": "uppercase"}, "LOUD words", 0.0),
        ({"family": "include_word", "word": "blue"}, "The Blue sky.", 1.0),
        ({"family": "include_word", "word": "blue"}, "The blueberry sky.", 0.0),
        ({"family": "avoid_word", "word": "blue"}, "The blueberry sky.", 1.0),
        ({"family": "avoid_word", "word": "blue"}, "so blue", 0.0),
        ({"family": "end_punctuation", "mark": "!"}, "Wow!  ", 1.0),
        ({"family": "end_punctuation", "mark": "!"}, "Wow.", 0.0),
        ({"family": "end_punctuation", "mark": "..."}, "Hmm...", 1.0),
        ({"family": "end_punctuation", "mark": "?"}, "Why?", 1.0),
        ({"family": "list_items", "n": 3}, "apple, pear, plum", 1.0),
        ({"family": "list_items", "n": 4}, "apple, pear, plum", 0.75),
        ({"family": "list_items", "n": 3}, "apple, , plum", 0.0),
        ({"family": "starts_with", "word": "Yes"}, "yes, indeed.", 1.0),
        ({"family": "starts_with", "word": "Yes"}, "Well, yes.", 0.0),
        ({"family": "arithmetic", "answer": 3}, "", 0.0),
    ],
)
def test_checkers_on_hand_written_completions(gold: dict, completion: str, expected: float) -> None:
    assert score_task(gold, completion) == pytest.approx(expected)


def test_final_number_extraction() -> None:
    assert extract_final_number("so #### 1,234") == "1234"
    assert extract_final_number("The answer is $5.") == "5"
    assert extract_final_number("It costs 2.50 dollars") == "2.5"
    assert extract_final_number("-3 degrees") == "-3"
    assert extract_final_number("no digits") is None
    assert gsm8k_score("#### 18", "she makes 18 dollars.") == 1.0
    assert gsm8k_score("18", "18.0") == 1.0
    assert gsm8k_score("18", "19") == 0.0


def test_gsm8k_reference_answers_score_themselves() -> None:
    rows = [json.loads(line) for line in (SHARED_DATA / "gsm8k/test.jsonl").open()]
    assert all(gsm8k_score(r["answer"], r["answer"]) == 1.0 for r in rows)
    assert all(gsm8k_score(r["answer"], "The answer is 0.123456") == 0.0 for r in rows[:50])


def test_gsm8k_checker_agrees_with_human_correctness_labels() -> None:
    """example_model_solutions.jsonl: model solutions labelled is_correct by the data set's authors."""
    agree = total = 0
    for line in (SHARED_DATA / "gsm8k/example_model_solutions.jsonl").open():
        row = json.loads(line)
        for value in row.values():
            if isinstance(value, dict) and "is_correct" in value and "solution" in value:
                total += 1
                agree += gsm8k_score(row["ground_truth"], value["solution"]) == float(value["is_correct"])
    assert total >= 1000
    assert agree / total >= 0.95, agree / total


def test_rule_reward_protocol() -> None:
    golds = [{"type": "task", "family": "arithmetic", "answer": 4}, {"type": "task", "family": "lowercase"}]
    scores = RuleReward("tasks").score(["q1", "q2"], ["4", "Upper"], golds)
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs a gold spec"):
        RuleReward("tasks").score(["q"], ["a"])
    with pytest.raises(ValueError, match="got a gold spec of type 'gsm8k'"):
        RuleReward("tasks").score(["q"], ["a"], [{"type": "gsm8k", "answer": "1"}])
    with pytest.raises(ValueError, match="unknown gold type"):
        score_gold({"type": "poem"}, "x")
