"""Converters on the real files in ../shared/data, with values read off the files by hand."""

from __future__ import annotations

import json

import pytest

from alignment.data import DataConfig, DataError, load, load_checked
from alignment.data.formats import (
    convert_alpaca,
    convert_dolly,
    convert_sharegpt,
    detect_format,
    parse_hh_dialogue,
)
from alignment.data.validate import RowError
from tests.helpers import SHARED_DATA

TRL_ZEN = sorted((SHARED_DATA / "trl-zen").glob("*.jsonl"))


def _load(rel: str, kind: str, **kw) -> list[dict]:
    return load(DataConfig(source=str(SHARED_DATA / rel), **kw), kind).rows


def test_hh_split_at_last_assistant_turn() -> None:
    rows = _load("hh-rlhf/harmless-base/test.jsonl.gz", "preference")
    first = rows[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"] == [
        {
            "role": "assistant",
            "content": "No, sorry!  All of these involve a pen, the point is "
            "that you can get funny results by doing pranks with pens.",
        }
    ]
    assert first["rejected"][0]["content"].startswith("There are lots of funny things you can do with pens")
    result = load(DataConfig(source=str(SHARED_DATA / "hh-rlhf/harmless-base/test.jsonl.gz")), "preference")
    assert result.format == "hh"
    assert result.total == 2012
    assert 0 < len(result.rejects) <= 20  # empty replies, reported with their line
    assert {r.reason for r in result.rejects} == {"empty_text", "bad_role_order", "missing_field"}
    assert [r.line for r in result.rejects][:2] == [87, 517]
    assert all(r.line is not None and r.line >= 1 for r in result.rejects)


def test_hh_dialogue_parser() -> None:
    assert parse_hh_dialogue("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    with pytest.raises(RowError):
        parse_hh_dialogue("no turns here")


def test_oasst_tree_pairs_sft_and_prompts() -> None:
    first_tree = json.loads((SHARED_DATA / "oasst/en_100_tree.jsonl").open().readline())
    root_text = first_tree["prompt"]["text"]
    pairs = _load("oasst/en_100_tree.jsonl", "preference")
    assert pairs and pairs[0]["prompt"] == [{"role": "user", "content": root_text}]
    replies = {r["text"]: r["rank"] for r in first_tree["prompt"]["replies"] if r.get("rank") is not None}
    for pair in (p for p in pairs if p["prompt"] == [{"role": "user", "content": root_text}]):
        assert replies[pair["chosen"][0]["content"]] < replies[pair["rejected"][0]["content"]]
    sft = _load("oasst/en_100_tree.jsonl", "sft")
    best = next(r["text"] for r in first_tree["prompt"]["replies"] if r.get("rank") == 0)
    assert {
        "prompt": [{"role": "user", "content": root_text}],
        "completion": [{"role": "assistant", "content": best}],
    }.items() <= sft[0].items()
    prompts = _load("oasst/en_100_tree.jsonl", "prompt")
    assert all(p["prompt"][-1]["role"] == "user" for p in prompts)


def test_gsm8k_prompt_rows_carry_the_gold_answer() -> None:
    rows = _load("gsm8k/test.jsonl", "prompt")
    raw = json.loads((SHARED_DATA / "gsm8k/test.jsonl").open().readline())
    assert len(rows) == 1000
    assert rows[0]["prompt"] == [{"role": "user", "content": raw["question"]}]
    assert rows[0]["gold"] == {
        "type": "gsm8k",
        "answer": raw["answer"].split("####")[-1].strip().replace(",", ""),
    }
    sft = _load("gsm8k/test.jsonl", "sft", max_rows=3)
    assert len(sft) == 3 and sft[0]["completion"][0]["content"] == raw["answer"]


@pytest.mark.parametrize(
    ("rel", "kind", "fmt", "count"),
    [
        ("oasst/prompt_lottery_en_250_text.jsonl", "prompt", "prompt_text", 250),
        ("mt-bench/question.jsonl", "prompt", "mt_bench", 80),
        ("self-instruct/seed_tasks.jsonl", "sft", "self_instruct", 175),
        ("self-instruct/user_oriented_instructions.jsonl", "prompt", "user_oriented", 252),
    ],
)
def test_prompt_and_instruction_sets(rel: str, kind: str, fmt: str, count: int) -> None:
    result = load(DataConfig(source=str(SHARED_DATA / rel)), kind)
    assert result.format == fmt
    assert len(result.rows) == count and not result.rejects
    first_line = json.loads((SHARED_DATA / rel).open().readline())
    text = (
        first_line if isinstance(first_line, str) else first_line.get("instruction") or first_line["turns"][0]
    )
    assert result.rows[0]["prompt"][0]["content"].startswith(text)


EXPECTED_TRL = {
    "standard_language_modeling": ("sft", {"text": "Beautiful is better than ugly."}),
    "conversational_language_modeling": (
        "sft",
        {
            "prompt": [{"role": "user", "content": "What is better than ugly?"}],
            "completion": [{"role": "assistant", "content": "Beautiful."}],
        },
    ),
    "standard_prompt_only": ("prompt", {"prompt": [{"role": "user", "content": "Beautiful is better than"}]}),
    "conversational_prompt_only": (
        "prompt",
        {"prompt": [{"role": "user", "content": "What is better than ugly?"}]},
    ),
    "standard_prompt_completion": (
        "sft",
        {
            "prompt": [{"role": "user", "content": "Beautiful is better than"}],
            "completion": [{"role": "assistant", "content": " ugly."}],
        },
    ),
    "conversational_prompt_completion": (
        "sft",
        {
            "prompt": [{"role": "user", "content": "What is better than ugly?"}],
            "completion": [{"role": "assistant", "content": "Beautiful."}],
        },
    ),
    "standard_preference": (
        "preference",
        {
            "prompt": [{"role": "user", "content": "Beautiful is better than"}],
            "chosen": [{"role": "assistant", "content": " ugly."}],
            "rejected": [{"role": "assistant", "content": " the moon."}],
        },
    ),
    "conversational_preference": (
        "preference",
        {
            "prompt": [{"role": "user", "content": "What is better than ugly?"}],
            "chosen": [{"role": "assistant", "content": "Beautiful."}],
            "rejected": [{"role": "assistant", "content": "Acceptable."}],
        },
    ),
    "standard_implicit_prompt_preference": (
        "preference",
        {
            "prompt": [{"role": "user", "content": "Beautiful is better than"}],
            "chosen": [{"role": "assistant", "content": "ugly."}],
            "rejected": [{"role": "assistant", "content": "the moon."}],
        },
    ),
    "conversational_implicit_prompt_preference": (
        "preference",
        {
            "prompt": [{"role": "user", "content": "What is better than ugly?"}],
            "chosen": [{"role": "assistant", "content": "Beautiful."}],
        },
    ),
    "standard_unpaired_preference": (
        "unpaired",
        {
            "prompt": [{"role": "user", "content": "Beautiful is better than"}],
            "completion": [{"role": "assistant", "content": " ugly."}],
            "label": True,
        },
    ),
    "conversational_unpaired_preference": (
        "unpaired",
        {
            "prompt": [{"role": "user", "content": "What is better than ugly?"}],
            "completion": [{"role": "assistant", "content": "Beautiful."}],
            "label": True,
        },
    ),
    "standard_stepwise_supervision": (
        "prompt",
        {"prompt": [{"role": "user", "content": "Beautiful is better than"}]},
    ),
}


@pytest.mark.parametrize("path", TRL_ZEN, ids=[p.stem for p in TRL_ZEN])
def test_every_trl_format(path) -> None:
    kind, expected_first = EXPECTED_TRL[path.stem]
    result = load(DataConfig(source=str(path)), kind)
    assert result.rows, result.rejects
    assert expected_first.items() <= result.rows[0].items()
    assert not result.rejects


def test_trl_zen_has_all_thirteen_files() -> None:
    assert len(TRL_ZEN) == 13 and set(EXPECTED_TRL) == {p.stem for p in TRL_ZEN}


def test_stepwise_sft_keeps_only_fully_correct_chains() -> None:
    rows = _load("trl-zen/standard_stepwise_supervision.jsonl", "sft")
    lines = [json.loads(x) for x in (SHARED_DATA / "trl-zen/standard_stepwise_supervision.jsonl").open()]
    assert len(rows) == sum(all(r["labels"]) for r in lines)


def test_alpaca_dolly_sharegpt() -> None:
    row = convert_alpaca({"instruction": "Translate", "input": "hola", "output": "hello"}, "sft")[0]
    assert row == {
        "prompt": [{"role": "user", "content": "Translate\n\nhola"}],
        "completion": [{"role": "assistant", "content": "hello"}],
    }
    assert (
        convert_alpaca({"instruction": "Hi", "input": "", "output": "Hello"}, "sft")[0]["prompt"][0][
            "content"
        ]
        == "Hi"
    )
    dolly = convert_dolly({"instruction": "Sum up", "context": "Text.", "response": "Short."}, "sft")[0]
    assert (
        dolly["prompt"][0]["content"] == "Sum up\n\nText." and dolly["completion"][0]["content"] == "Short."
    )
    share = convert_sharegpt(
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
            ]
        },
        "sft",
    )[0]
    assert [m["role"] for m in share["prompt"]] == ["system", "user"] and share["completion"][0][
        "content"
    ] == "Hello"
    assert detect_format({"instruction": "a", "output": "b"}) == "alpaca"
    assert detect_format({"instruction": "a", "response": "b"}) == "dolly"
    with pytest.raises(ValueError, match="cannot detect"):
        detect_format({"foo": 1})


def test_wrong_kind_for_a_format_fails_the_stage_clearly() -> None:
    cfg = DataConfig(source=str(SHARED_DATA / "trl-zen/standard_prompt_only.jsonl"))
    with pytest.raises(DataError, match="unsupported_format x19") as error:
        load_checked(cfg, "preference")
    assert "standard_prompt_only.jsonl:1" in str(error.value)


def test_preference_with_prompt_repeated_inside_replies() -> None:
    from alignment.data.formats import convert_preference

    record = {
        "prompt": "Hi?",
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
    }
    row = convert_preference(record, "preference")[0]
    assert row["chosen"] == [{"role": "assistant", "content": "Hello."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Go away."}]
