"""Config schema: YAML values, key=value overrides, errors that name the key, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignment.config import (
    ConfigError,
    config_hash,
    expand_env,
    load_pipeline,
    parse_overrides,
    pipeline_from_dict,
    save_resolved,
    stage_args,
)

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_values_and_overrides_reach_the_trl_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path, {"name": "x", "sft": {"learning_rate": 0.5, "max_steps": 3, "data": {"task_count": 9}}}
    )
    pipeline = load_pipeline(
        path, ["sft.learning_rate=1e-4", "sft.data.eval_fraction=0.25", "model.dtype=float32"]
    )
    args = stage_args(pipeline, "sft", output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False)
    assert args.learning_rate == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: coerced to float
    assert args.max_steps == 3
    assert args.data.task_count == 9
    assert args.data.eval_fraction == 0.25
    assert args.seed == 42  # the pipeline seed flows into the stage
    assert pipeline.model.dtype == "float32"
    assert pipeline.output_dir == str(Path.cwd() / "runs" / "x")  # runs/<name>, from the current directory


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path, {"sft": {"learnin_rate": 0.1}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'sft.learnin_rate' \(did you mean 'learning_rate'\?\)"
    ):
        load_pipeline(path)
    with pytest.raises(ConfigError, match=r"unknown key 'model.tuning.methd' \(did you mean 'method'\?\)"):
        pipeline_from_dict({"model": {"tuning": {"methd": "lora"}}}, "t.yaml")


def test_unknown_nested_data_key(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"t.yaml: unknown key 'sft.data.sorce' \(did you mean 'source'\?\)"
    ):
        pipeline_from_dict({"sft": {"data": {"sorce": "x"}}}, "t.yaml")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"sft": {"max_steps": "ten"}}, r"sft.max_steps = 'ten' has the wrong type; expected int"),
        ({"sft": {"packing": "yes"}}, r"sft.packing = 'yes' has the wrong type; expected bool"),
        (
            {"model": {"tuning": {"method": "lorax"}}},
            r"model.tuning.method = 'lorax' has the wrong type; expected one of",
        ),
        ({"seed": 1.5}, r"seed = 1.5 has the wrong type; expected int"),
        ({"sft": {"data": {"eval_fraction": [1]}}}, r"sft.data.eval_fraction = \[1\] has the wrong type"),
    ],
)
def test_wrong_types_are_errors_naming_the_key(section: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        pipeline_from_dict(section, "t.yaml")


def test_unknown_stage_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="stages lists unknown stage 'sftt'"):
        pipeline_from_dict({"stages": ["sftt"]}, "t.yaml")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["sft.learning_rate"])
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null", "e=x"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": None,
        "e": "x",
    }


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_ROOT", "/data")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert expand_env("${DATA_ROOT}/hh.jsonl") == "/data/hh.jsonl"
    assert expand_env("${NOT_SET_ANYWHERE:-../shared}/x") == "../shared/x"
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        expand_env("${NOT_SET_ANYWHERE}/x")
    pipeline = pipeline_from_dict({"output_dir": "${DATA_ROOT}/out"})
    assert pipeline.output_dir == "/data/out"


def test_hash_ignores_where_but_not_what() -> None:
    base = {"name": "h", "sft": {"learning_rate": 0.1, "logging_steps": 1}}
    h0 = config_hash(pipeline_from_dict(base), "sft")
    moved = config_hash(
        pipeline_from_dict({**base, "output_dir": "/elsewhere", "tracking": {"mode": "disabled"}}), "sft"
    )
    quieter = config_hash(
        pipeline_from_dict({"name": "h", "sft": {"learning_rate": 0.1, "logging_steps": 50}}), "sft"
    )
    changed = config_hash(
        pipeline_from_dict({"name": "h", "sft": {"learning_rate": 0.2, "logging_steps": 1}}), "sft"
    )
    other_model = config_hash(pipeline_from_dict({**base, "model": {"name_or_path": "other"}}), "sft")
    assert h0 == moved == quieter
    assert len({h0, changed, other_model}) == 3


def test_resolved_config_loads_back_to_the_same_hash(tmp_path: Path) -> None:
    pipeline = load_pipeline(REPO / "configs" / "pipelines" / "smoke.yaml", ["sft.max_steps=3"])
    path = save_resolved(pipeline, tmp_path)
    again = load_pipeline(path)
    assert again.resolved() == pipeline.resolved()
    assert config_hash(again, "sft") == config_hash(pipeline, "sft")


def test_every_shipped_pipeline_config_validates() -> None:
    configs = sorted((REPO / "configs" / "pipelines").glob("*.yaml"))
    assert configs, "no pipeline configs shipped"
    for path in configs:
        pipeline = load_pipeline(path)
        for stage in pipeline.stage_sections:
            args = stage_args(
                pipeline, stage, output_dir=str(Path("/tmp") / "unused"), use_cpu=True, bf16=False
            )
            assert args.output_dir == "/tmp/unused"


def test_every_shipped_accelerate_config_is_distribution_only() -> None:
    hyper = {"learning_rate", "per_device_train_batch_size", "max_steps", "beta"}
    for path in (REPO / "configs" / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert "distributed_type" in data, path
        assert not hyper & set(data), f"{path} holds hyperparameters"
