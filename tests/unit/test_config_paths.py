"""Where the paths of a config point: relative to the file that names them, from whatever directory a run starts;
command-line overrides, output_dir and artifact paths relative to the current directory; shipped configs by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from alignment import config as config_module
from alignment.config import ConfigError, config_hash, load_pipeline, save_resolved
from tests.helpers import run_cli_in_process

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "pipelines" / "smoke.yaml"


def _project(tmp_path: Path) -> Path:
    """tmp/project/configs/p.yaml beside its own accelerate config, data, chat template and model folder."""
    project = tmp_path / "project"
    (project / "configs" / "data").mkdir(parents=True)
    (project / "accel").mkdir()
    (project / "configs" / "model").mkdir()
    (project / "configs" / "model" / "config.json").write_text("{}")
    shutil.copy(REPO / "configs" / "accelerate" / "cpu.yaml", project / "accel" / "a.yaml")
    (project / "configs" / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (project / "configs" / "template.jinja").write_text("{{ messages }}")
    config = {
        "name": "p",
        "accelerate_config": "../accel/a.yaml",
        "model": {"name_or_path": "./model", "chat_template": "template.jinja"},
        "stages": ["sft"],
        "sft": {"data": {"source": "data/train.jsonl"}, "eval_data": {"source": "./data/train.jsonl"}},
        "evaluation": {"data": {"source": "data/train.jsonl"}},
    }
    path = project / "configs" / "p.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_relative_paths_in_a_file_are_relative_to_that_file(tmp_path: Path, monkeypatch) -> None:
    path = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pipeline = load_pipeline(path)
    here = path.parent
    assert pipeline.accelerate_config == str(tmp_path / "project" / "accel" / "a.yaml")
    assert pipeline.model.name_or_path == str(here / "model")
    assert pipeline.model.chat_template == str(here / "template.jinja")
    assert pipeline.stage_sections["sft"]["data"].source == str(here / "data" / "train.jsonl")
    assert pipeline.stage_sections["sft"]["eval_data"].source == str(here / "data" / "train.jsonl")
    assert pipeline.evaluation is not None
    assert pipeline.evaluation.data.source == str(here / "data" / "train.jsonl")
    # output_dir is the exception: runs land where they are started
    assert pipeline.output_dir == str(elsewhere / "runs" / "p")


def test_command_line_overrides_are_relative_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    path = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(
        path,
        [
            "sft.data.source=mine.jsonl",
            "accelerate_config=acc.yaml",
            "output_dir=out",
            "model.chat_template=t.j",
        ],
    )
    assert pipeline.stage_sections["sft"]["data"].source == str(tmp_path / "mine.jsonl")
    assert pipeline.accelerate_config == str(tmp_path / "acc.yaml")
    assert pipeline.output_dir == str(tmp_path / "out")
    assert pipeline.model.chat_template == str(tmp_path / "t.j")


def test_output_dir_and_artifact_paths_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch
) -> None:
    path = _project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["output_dir"] = "runs/mine"
    raw["stages"] = ["sft", "ppo"]
    raw["ppo"] = {
        "init_from": "runs/quickstart/sft",
        "reference_from": "runs/quickstart/sft",
        "reward_model": "mix:0.5*runs/rm/reward+0.5*rule:tasks",
        "value_model": "runs/rm/reward",
    }
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(path)
    ppo = pipeline.stage_sections["ppo"]
    assert pipeline.output_dir == str(tmp_path / "runs" / "mine")
    assert ppo["init_from"] == ppo["reference_from"] == str(tmp_path / "runs" / "quickstart" / "sft")
    assert ppo["reward_model"] == f"mix:0.5*{tmp_path / 'runs' / 'rm' / 'reward'}+0.5*rule:tasks"
    assert ppo["value_model"] == str(tmp_path / "runs" / "rm" / "reward")


def test_names_keywords_and_specs_are_not_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = {
        "model": {"name_or_path": "tiny-random-llama"},
        "stages": ["sft"],
        "sft": {"data": {"source": "builtin:tasks"}, "model": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}},
        "dpo": {"data": {"source": "hub:Anthropic/hh-rlhf"}, "init_from": "sft", "reference_from": "sft"},
        "ppo": {"init_from": "model", "reward_model": "mix:0.8*reward+0.2*rule:tasks", "value_model": "auto"},
        "grpo": {"reward_model": "rule:tasks", "data": {"source": "service:pairs@3"}},
        "rloo": {"reward_model": "reward", "data": {"source": "org/dataset"}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    pipeline = load_pipeline(path)
    sections = pipeline.stage_sections
    assert pipeline.model.name_or_path == "tiny-random-llama"
    assert sections["sft"]["model"].name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert sections["sft"]["data"].source == "builtin:tasks"
    assert sections["dpo"]["data"].source == "hub:Anthropic/hh-rlhf"
    assert sections["dpo"]["init_from"] == sections["dpo"]["reference_from"] == "sft"
    assert (sections["ppo"]["init_from"], sections["ppo"]["value_model"]) == ("model", "auto")
    assert sections["ppo"]["reward_model"] == "mix:0.8*reward+0.2*rule:tasks"
    assert sections["grpo"]["reward_model"] == "rule:tasks"
    assert sections["grpo"]["data"].source == "service:pairs@3"
    assert sections["rloo"]["data"].source == "org/dataset"  # a bare hub name: no such folder anywhere


def test_environment_variables_and_absolute_paths_are_taken_as_they_are(tmp_path: Path, monkeypatch) -> None:
    path = _project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["sft"]["data"]["source"] = "${MY_DATA}/train.jsonl"
    raw["sft"]["eval_data"]["source"] = "${UNSET_DATA_VARIABLE:-shared}/eval.jsonl"
    raw["evaluation"]["data"]["source"] = "/abs/held_out.jsonl"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MY_DATA", "relative/data")
    monkeypatch.delenv("UNSET_DATA_VARIABLE", raising=False)
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(path)
    assert pipeline.stage_sections["sft"]["data"].source == str(
        tmp_path / "relative" / "data" / "train.jsonl"
    )
    assert pipeline.stage_sections["sft"]["eval_data"].source == str(tmp_path / "shared" / "eval.jsonl")
    assert pipeline.evaluation is not None
    assert pipeline.evaluation.data.source == "/abs/held_out.jsonl"


def test_a_path_found_only_from_the_current_directory_is_an_error_naming_the_rule(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text("{}\n")
    path = tmp_path / "configs" / "c.yaml"
    path.write_text(yaml.safe_dump({"sft": {"data": {"source": "data/x.jsonl"}}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"sft\.data\.source data/x\.jsonl does not exist relative to the config"
    ):
        load_pipeline(path)


def test_hash_and_resolved_paths_are_the_same_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    path = _project(tmp_path)
    monkeypatch.chdir(path.parent)
    from_beside = load_pipeline(path)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    from_elsewhere = load_pipeline(path)
    assert config_hash(from_beside, "sft") == config_hash(from_elsewhere, "sft")
    assert from_beside.stage_sections == from_elsewhere.stage_sections
    monkeypatch.chdir(REPO)
    smoke_at_root = load_pipeline(SMOKE)
    monkeypatch.chdir(other)
    smoke_elsewhere = load_pipeline(SMOKE)
    for stage in smoke_at_root.stage_sections:
        assert config_hash(smoke_at_root, stage) == config_hash(smoke_elsewhere, stage)
    # The saved resolved config shows absolute paths and loads back, from its own folder, to the same hash.
    saved = save_resolved(from_elsewhere, tmp_path / "other")
    again = yaml.safe_load(saved.read_text())
    assert again["accelerate_config"] == str(tmp_path / "project" / "accel" / "a.yaml")
    assert again["sft"]["data"]["source"] == str(path.parent / "data" / "train.jsonl")
    assert config_hash(load_pipeline(saved), "sft") == config_hash(from_elsewhere, "sft")


def test_compare_pipeline_and_its_overrides_are_relative_to_the_compare_file(
    tmp_path: Path, monkeypatch
) -> None:
    from alignment.compare import load_compare

    pipeline_path = _project(tmp_path)
    compare_dir = tmp_path / "project" / "compare"
    compare_dir.mkdir()
    (compare_dir / "gpu.yaml").write_text((REPO / "configs" / "accelerate" / "multi_gpu.yaml").read_text())
    (compare_dir / "prompts.jsonl").write_text('{"prompt": "a"}\n')
    compare = {
        "name": "c",
        "pipeline": "../configs/p.yaml",
        "pipeline_overrides": ["accelerate_config=gpu.yaml", "sft.max_steps=2"],
        "arms": [{"name": "dpo", "stage": "dpo"}],
        "evaluation": {"prompts": {"source": "prompts.jsonl"}, "rm": None},
    }
    raw = yaml.safe_load(pipeline_path.read_text())
    raw["dpo"] = {"init_from": "sft"}
    pipeline_path.write_text(yaml.safe_dump(raw))
    (compare_dir / "c.yaml").write_text(yaml.safe_dump(compare))
    monkeypatch.chdir(tmp_path)
    loaded = load_compare(compare_dir / "c.yaml")
    assert loaded.pipeline == str(pipeline_path)
    assert loaded.pipeline_overrides[0] == f'accelerate_config="{compare_dir / "gpu.yaml"}"'
    assert loaded.pipeline_overrides[1] == "sft.max_steps=2"
    assert loaded.evaluation.prompts.source == str(compare_dir / "prompts.jsonl")
    assert load_pipeline(loaded.pipeline, loaded.pipeline_overrides).accelerate_config == str(
        compare_dir / "gpu.yaml"
    )


def test_a_shipped_name_where_a_config_is_named(tmp_path: Path, monkeypatch) -> None:
    from alignment.compare import load_compare

    monkeypatch.chdir(tmp_path)
    copied = (
        tmp_path / "my_smoke.yaml"
    )  # a shipped config copied elsewhere keeps working: `accelerate_config: cpu`
    copied.write_text(SMOKE.read_text())
    assert load_pipeline(copied).accelerate_config == str(REPO / "configs" / "accelerate" / "cpu.yaml")
    mine = tmp_path / "elsewhere" / "cpu"  # a file beside the config is that file, even under a shipped name
    mine.parent.mkdir()
    mine.write_text((REPO / "configs" / "accelerate" / "cpu.yaml").read_text())
    shutil.copy(copied, mine.parent / "p.yaml")
    assert load_pipeline(mine.parent / "p.yaml").accelerate_config == str(mine)
    assert load_pipeline("quickstart").name == "quickstart"
    compare = load_compare(REPO / "configs" / "compare" / "smoke.yaml")
    assert compare.pipeline == str(SMOKE)
    with pytest.raises(ConfigError, match="shipped pipelines config .*quickstart"):
        load_pipeline("quickstrat")
    copied.write_text(SMOKE.read_text().replace("accelerate_config: cpu", "accelerate_config: cpuu"))
    with pytest.raises(ConfigError, match="accelerate_config: cpuu: neither a file nor the name"):
        load_pipeline(copied)


def test_shipped_configs_run_from_a_temporary_working_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (("run", "quickstart"), ("run", str(SMOKE)), ("compare", "smoke"), ("compare", "quickstart")):
        code, out, err = run_cli_in_process(capsys, *args, "--dry-run")
        assert code == 0, (args, err)
        commands = [line.split() for line in out.splitlines() if "accelerate.commands.launch" in line]
        assert commands, out
        for command in commands:
            accelerate_config = Path(command[command.index("--config_file") + 1])
            resolved = Path(command[command.index("--config") + 1])
            assert accelerate_config.is_file() and accelerate_config.is_absolute()
            assert resolved.is_file() and resolved.is_relative_to(tmp_path)  # runs land here


def test_alignment_configs_lists_the_shipped_configs_with_their_description(capsys) -> None:
    code, out, _ = run_cli_in_process(capsys, "configs")
    assert code == 0
    sections: dict[str, dict[str, str]] = {}
    kind = ""
    for line in out.splitlines():
        if line.startswith("  "):
            name, description = line.split(None, 1)
            sections[kind][name] = description
        elif line.endswith("):"):
            kind = line.split()[0]
            sections[kind] = {}
    assert set(sections) == {"pipelines", "compare", "accelerate"}
    assert sections["pipelines"]["quickstart"].startswith("Quickstart: SFT -> reward model -> DPO")
    assert (
        sections["pipelines"]["smoke"] == "Smoke run: the whole machinery on a tiny random model in seconds."
    )
    assert sections["compare"]["quickstart"].startswith("RLHF vs DPO on the quickstart model")
    assert sections["accelerate"]["zero3"] == "DeepSpeed ZeRO-3 on one 8-GPU node."


def test_installed_package_finds_the_configs_where_pyproject_installs_them(
    tmp_path: Path, monkeypatch
) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*") if p.is_file())
    installed = tmp_path / "prefix"
    for target, patterns in data.items():
        for pattern in patterns:
            for source in REPO.glob(pattern):
                (installed / target).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, installed / target / source.name)
    root = installed / "share" / "alignment" / "configs"
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == shipped  # every file ships
    monkeypatch.setattr(
        config_module, "__file__", str(tmp_path / "site-packages" / "alignment" / "config.py")
    )
    monkeypatch.setattr(config_module.sysconfig, "get_path", lambda name: str(installed))
    assert config_module.configs_dir() == root
    monkeypatch.chdir(tmp_path)
    assert load_pipeline("quickstart").accelerate_config == str(root / "accelerate" / "cpu.yaml")
