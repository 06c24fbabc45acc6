"""Every reject reason, with file and line; the too-many-rejects error; sources and snapshots."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alignment.data import (
    DataConfig,
    DataError,
    content_hash,
    load,
    load_checked,
    split_train_eval,
    write_jsonl,
)
from alignment.data.validate import REASONS, validate_row

U = {"role": "user", "content": "Q?"}
A = {"role": "assistant", "content": "A."}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_reason_is_reported_with_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "B."}]})
    lines = [
        good,  # 1 ok
        "{not json",  # 2 malformed_json
        json.dumps({"prompt": [U], "chosen": [A]}),  # 3 missing_field
        json.dumps({"prompt": [U], "chosen": [A], "rejected": 5}),  # 4 wrong_type
        json.dumps(
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "  "}]}
        ),  # 5 empty
        json.dumps({"prompt": [U], "chosen": [A], "rejected": [A]}),  # 6 identical_pair
        json.dumps(
            {"prompt": [U, U], "chosen": [A], "rejected": [{"role": "assistant", "content": "B."}]}
        ),  # 7 order
        json.dumps(
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "x " * 50}]}
        ),  # 8 long
    ]
    path = _write(tmp_path / "pairs.jsonl", lines)
    result = load(
        DataConfig(source=str(path), format="preference", max_length=20),
        "preference",
        token_length=lambda row: len(row["rejected"][0]["content"].split()),
    )
    assert len(result.rows) == 1 and result.total == 8
    got = {(r.line, r.reason) for r in result.rejects}
    assert got == {
        (2, "malformed_json"),
        (3, "missing_field"),
        (4, "wrong_type"),
        (5, "empty_text"),
        (6, "identical_pair"),
        (7, "bad_role_order"),
        (8, "too_long"),
    }
    assert all(r.source == str(path) for r in result.rejects)
    assert "50 tokens > max_length 20" in next(r.detail for r in result.rejects if r.reason == "too_long")


def test_unsupported_format_reason(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "only a prompt"})])
    result = load(DataConfig(source=str(path)), "sft")
    assert [(r.line, r.reason) for r in result.rejects] == [(1, "unsupported_format")]
    assert set(REASONS) >= {
        "malformed_json",
        "missing_field",
        "empty_text",
        "identical_pair",
        "bad_role_order",
        "too_long",
        "unsupported_format",
        "wrong_type",
    }


def test_too_many_rejects_fails_with_summary_and_what_to_do(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": "q", "completion": "a"})] * 97 + ["{bad"] * 3
    path = _write(tmp_path / "sft.jsonl", lines)
    assert len(load_checked(DataConfig(source=str(path), max_reject_fraction=0.05), "sft").rows) == 97
    with pytest.raises(DataError) as error:
        load_checked(DataConfig(source=str(path)), "sft")
    message = str(error.value)
    assert "3 of 100 rows rejected (3.0% > max_reject_fraction 1.0%)" in message
    assert "malformed_json x3" in message and f"{path}:98" in message and "max_reject_fraction" in message


def test_validate_row_system_message_and_kinds() -> None:
    system = {"role": "system", "content": "Be kind."}
    assert validate_row({"prompt": [system, U], "completion": [A]}, "sft") is None
    assert validate_row({"prompt": [U, system], "completion": [A]}, "sft") == "bad_role_order"
    assert validate_row({"prompt": [U, A, U], "completion": [A]}, "sft") is None
    assert validate_row({"prompt": [A], "completion": [A]}, "sft") == "bad_role_order"
    assert validate_row({"text": ""}, "sft") == "empty_text"
    assert validate_row({"prompt": [U], "completion": [A], "label": "yes"}, "unpaired") == "wrong_type"
    with pytest.raises(ValueError, match="unknown row kind"):
        validate_row({"prompt": [U]}, "nonsense")


def test_gzip_json_list_and_dataset_dir_sources(tmp_path: Path) -> None:
    row = {"prompt": "q", "completion": "a"}
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(row) + "\n")
    assert (
        load(DataConfig(source=str(tmp_path / "a.jsonl.gz")), "sft").rows[0]["completion"][0]["content"]
        == "a"
    )
    (tmp_path / "b.json").write_text(json.dumps({"data": [row, row]}))
    assert len(load(DataConfig(source=str(tmp_path / "b.json")), "sft").rows) == 2

    import datasets

    datasets.Dataset.from_list([row] * 3).save_to_disk(str(tmp_path / "ds"))
    result = load(DataConfig(source=str(tmp_path / "ds")), "sft")
    assert len(result.rows) == 3 and result.format == "prompt_completion"
    with pytest.raises(DataError, match="does not exist"):
        load(DataConfig(source=str(tmp_path / "missing.jsonl")), "sft")


def test_env_var_in_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "x.jsonl", [json.dumps({"prompt": "q", "completion": "a"})])
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert len(load(DataConfig(source="${MY_DATA}/x.jsonl"), "sft").rows) == 1


def test_split_and_hash_are_deterministic(tmp_path: Path) -> None:
    rows = [{"i": i} for i in range(100)]
    train, held = split_train_eval(rows, 0.2, seed=3)
    assert len(held) == 20 and len(train) == 80
    assert split_train_eval(rows, 0.2, seed=3) == (train, held)
    assert split_train_eval(rows, 0.2, seed=4)[1] != held
    assert not {r["i"] for r in train} & {r["i"] for r in held}
    assert content_hash(rows) == content_hash([dict(r) for r in rows]) != content_hash(rows[::-1])
    assert write_jsonl(rows, tmp_path / "s.jsonl") == content_hash(rows)
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 100
    with pytest.raises(ValueError):
        split_train_eval(rows, 1.0, 0)


def test_split_keeps_rows_of_one_prompt_together() -> None:
    rows = [
        {"prompt": [{"role": "user", "content": f"q{i // 3}"}], "n": i} for i in range(60)
    ]  # 20 prompts x 3
    train, held = split_train_eval(rows, 0.25, seed=0)
    train_prompts = {r["prompt"][0]["content"] for r in train}
    held_prompts = {r["prompt"][0]["content"] for r in held}
    assert not train_prompts & held_prompts
    assert 12 <= len(held) <= 18 and len(held) % 3 == 0


def test_gsm8k_solution_pairs_by_question() -> None:
    from tests.helpers import SHARED_DATA

    result = load(DataConfig(source=str(SHARED_DATA / "gsm8k/example_model_solutions.jsonl")), "preference")
    assert result.format == "gsm8k_solutions" and not result.rejects
    first = json.loads((SHARED_DATA / "gsm8k/example_model_solutions.jsonl").open().readline())
    labels = [v["is_correct"] for v in first.values() if isinstance(v, dict) and "is_correct" in v]
    n_first = sum(1 for r in result.rows if r["prompt"][0]["content"] == first["question"])
    assert n_first == sum(labels) * (len(labels) - sum(labels))
