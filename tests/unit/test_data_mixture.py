"""Weighted data mixtures (alignment.data `mixture:`): the rows interleave_datasets draws, the composition recorded,
formats that must agree, weights that must be positive, `revision` reaching load_dataset, single sources unchanged."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pytest

from alignment.config import ConfigError, config_hash, load_pipeline, pipeline_from_dict, save_resolved
from alignment.data import DataConfig, DataError, MixtureSource, content_hash, load, load_checked


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def demonstrations(name: str, count: int) -> list[dict[str, str]]:
    return [{"prompt": f"{name} question {i}", "completion": f"{name} answer {i}"} for i in range(count)]


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[str, str]:
    return (
        write_jsonl(tmp_path / "a.jsonl", demonstrations("a", 40)),
        write_jsonl(tmp_path / "b.jsonl", demonstrations("b", 30)),
    )


def mixture_config(a: str, b: str, seed: int, **fields: Any) -> DataConfig:
    return DataConfig(mixture=[MixtureSource(a, 0.75), MixtureSource(b, 0.25)], seed=seed, **fields)


def prompt_text(row: dict[str, Any]) -> str:
    return row["prompt"][0]["content"]


def test_mixture_draws_what_interleave_datasets_draws(two_files: tuple[str, str]) -> None:
    a, b = two_files
    result = load_checked(mixture_config(a, b, seed=7), "sft")

    expected = datasets.interleave_datasets(
        [datasets.Dataset.from_list(demonstrations(name, n)) for name, n in (("a", 40), ("b", 30))],
        probabilities=[0.75, 0.25],
        seed=7,
        stopping_strategy="first_exhausted",
    )
    assert [prompt_text(row) for row in result.rows] == expected["prompt"]
    counts = Counter(prompt_text(row).split()[0] for row in result.rows)
    assert counts["a"] == 40 and 0 < counts["b"] < 30  # first_exhausted: `a` ran out first, no row twice
    assert load_checked(mixture_config(a, b, seed=7), "sft").rows == result.rows  # deterministic
    other = load_checked(mixture_config(a, b, seed=8), "sft")
    assert [prompt_text(row) for row in other.rows] != [prompt_text(row) for row in result.rows]


def test_mixture_composition_is_recorded(two_files: tuple[str, str]) -> None:
    a, b = two_files
    result = load_checked(mixture_config(a, b, seed=7), "sft")
    composition = result.composition()

    assert composition is not None and composition["rows"] == len(result.rows)
    first, second = composition["sources"]
    assert (first["source"], first["weight"], first["probability"]) == (a, 0.75, 0.75)
    assert (second["source"], second["weight"], second["probability"]) == (b, 0.25, 0.25)
    drawn = Counter(prompt_text(row).split()[0] for row in result.rows)
    assert (first["rows_drawn"], second["rows_drawn"]) == (drawn["a"], drawn["b"])
    assert (first["rows_available"], second["rows_available"]) == (40, 30)
    assert first["content_hash"] == content_hash(load(DataConfig(source=a), "sft").rows)
    assert second["content_hash"] == content_hash(load(DataConfig(source=b), "sft").rows)
    assert first["revision"] is None and first["format"] == "prompt_completion"
    assert load(DataConfig(source=a), "sft").composition() is None


def test_all_exhausted_draws_every_row_and_max_rows_cuts_the_mixture(two_files: tuple[str, str]) -> None:
    a, b = two_files
    every = load_checked(mixture_config(a, b, seed=7, stopping_strategy="all_exhausted"), "sft")
    texts = {prompt_text(row) for row in every.rows}
    assert texts == {f"{name} question {i}" for name, n in (("a", 40), ("b", 30)) for i in range(n)}
    assert len(every.rows) > 70  # oversampling: `a` repeats while the rarer `b` is drawn completely

    cut = load_checked(mixture_config(a, b, seed=7, max_rows=10), "sft")
    assert cut.rows == load_checked(mixture_config(a, b, seed=7), "sft").rows[:10]
    assert sum(part["rows_drawn"] for part in cut.composition()["sources"]) == 10  # type: ignore[index]


def test_preference_pairs_and_demonstrations_are_refused_naming_both(tmp_path: Path) -> None:
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)],
    )
    sft = write_jsonl(tmp_path / "sft.jsonl", demonstrations("s", 5))
    cfg = DataConfig(mixture=[MixtureSource(pairs, 0.5), MixtureSource(sft, 0.5)])
    for kind in ("sft", "preference"):
        with pytest.raises(DataError) as error:
            load_checked(cfg, kind)
        assert pairs in str(error.value) and sft in str(error.value)
        assert "preference pairs" in str(error.value) and "demonstrations" in str(error.value)
    # Prompts come from every kind of record; without replacement every row is drawn once.
    cfg.stopping_strategy = "all_exhausted_without_replacement"
    prompts = sorted(prompt_text(row) for row in load_checked(cfg, "prompt").rows)
    assert prompts == sorted([f"q{i}" for i in range(5)] + [f"s question {i}" for i in range(5)])


@pytest.mark.parametrize("weight", [0, -0.5])
def test_zero_or_negative_weight_is_refused(two_files: tuple[str, str], weight: float) -> None:
    a, b = two_files
    with pytest.raises(ConfigError, match=r"mixture\[1\]\.weight"):
        DataConfig(mixture=[MixtureSource(a, 1.0), MixtureSource(b, weight)])
    raw = {"sft": {"data": {"mixture": [{"source": a, "weight": 1}, {"source": b, "weight": weight}]}}}
    with pytest.raises(ConfigError, match="above 0"):
        pipeline_from_dict(raw)


def test_source_and_mixture_together_are_refused(two_files: tuple[str, str]) -> None:
    a, b = two_files
    with pytest.raises(ConfigError, match="both source"):
        DataConfig(source=a, mixture=[MixtureSource(b, 1.0)])


def test_revision_reaches_load_dataset(monkeypatch: pytest.MonkeyPatch, two_files: tuple[str, str]) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def load_dataset(name: str, *args: Any, **kwargs: Any) -> datasets.Dataset:  # never the network
        calls.append((name, kwargs))
        return datasets.Dataset.from_list(demonstrations("hub", 20))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    a, _ = two_files
    single = load_checked(DataConfig(source="hub:org/set", revision="v1.2"), "sft")
    assert calls[-1] == ("org/set", {"split": "train", "revision": "v1.2"})
    assert len(single.rows) == 20

    cfg = DataConfig(
        mixture=[MixtureSource("hub:org/set", 0.5, revision="0123abc"), MixtureSource(a, 0.5)], seed=1
    )
    result = load_checked(cfg, "sft")
    assert calls[-1] == ("org/set", {"split": "train", "revision": "0123abc"})
    assert result.composition()["sources"][0]["revision"] == "0123abc"  # type: ignore[index]

    with pytest.raises(DataError, match="hub datasets only"):
        load(DataConfig(source=a, revision="v1"), "sft")


def test_single_source_config_is_unchanged(tmp_path: Path, two_files: tuple[str, str]) -> None:
    a, _ = two_files
    rows = load_checked(DataConfig(source=a), "sft").rows
    assert rows == [
        {
            "prompt": [{"role": "user", "content": f"a question {i}"}],
            "completion": [{"role": "assistant", "content": f"a answer {i}"}],
        }
        for i in range(40)
    ]
    # The resolved section (what the config hash covers) holds exactly the fields it held before mixtures.
    pipeline = pipeline_from_dict({"sft": {"data": {"source": a, "eval_fraction": 0.1}}})
    resolved = pipeline.resolved()["sft"]["data"]
    before = {f.name for f in dataclasses.fields(DataConfig)} - {"revision", "mixture", "stopping_strategy"}
    assert set(resolved) == before
    assert resolved == {
        k: v for k, v in dataclasses.asdict(DataConfig(source=a, eval_fraction=0.1)).items() if k in before
    }
    mixed = pipeline_from_dict({"sft": {"data": {"mixture": [{"source": a, "weight": 1}]}}})
    assert mixed.resolved()["sft"]["data"]["mixture"] == [dataclasses.asdict(MixtureSource(a, 1.0))]
    assert mixed.resolved()["sft"]["data"]["source"] == "mixture:"  # never the unused default builtin:tasks
    assert config_hash(mixed, "sft") != config_hash(pipeline, "sft")


def test_mixture_sources_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", demonstrations("a", 3))
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "sft:\n  data:\n    seed: 3\n    mixture:\n"
        "      - {source: data/a.jsonl, weight: 0.7}\n"
        "      - {source: hub:org/set, weight: 0.3, revision: v1}\n"
    )
    pipeline = load_pipeline(config)
    data = pipeline.stage_sections["sft"]["data"]
    assert [entry.source for entry in data.mixture] == [str(tmp_path / "data" / "a.jsonl"), "hub:org/set"]
    assert data.mixture[1].revision == "v1" and data.seed == 3
    (tmp_path / "saved").mkdir()
    again = load_pipeline(save_resolved(pipeline, tmp_path / "saved"))  # resolved_config.yaml loads again
    assert again.stage_sections["sft"]["data"] == data and config_hash(again, "sft") == config_hash(
        pipeline, "sft"
    )


def test_stage_records_the_mixture_for_manifest_and_wandb(tmp_path: Path, two_files: tuple[str, str]) -> None:
    from alignment.stages.common import StageRun

    a, b = two_files
    pipeline = pipeline_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "tracking": {"mode": "disabled"},
            "sft": {"data": {"seed": 7, "mixture": [{"source": a, "weight": 3}, {"source": b, "weight": 1}]}},
        }
    )
    run = StageRun(pipeline, "sft")
    logged: list[tuple[Any, ...]] = []
    run.tracker.use_dataset = lambda *args: logged.append(args)  # type: ignore[method-assign]
    train, _ = run.load_rows(pipeline.stage_sections["sft"]["data"], "sft", "train")

    expected = load_checked(mixture_config(a, b, seed=7), "sft")
    assert train == expected.rows and run.data_hashes["train"] == content_hash(expected.rows)
    composition = run.data_mixtures["train"]
    assert [part["rows_drawn"] for part in composition["sources"]] == [
        part.rows_drawn for part in expected.mixture or []
    ]
    assert [part["probability"] for part in composition["sources"]] == [0.75, 0.25]
    metadata = logged[0][3]
    assert metadata["mixture"] == composition and metadata["source"] == f"mixture({a}*3, {b}*1)"
