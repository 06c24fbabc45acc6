"""`alignment push`: the model card follows the artifact's lineage, the upload plan never holds pickles, and the
upload path runs against a recording fake of `HfApi` (no network).

The lineage is written by hand (sft -> reward -> ppo, each published with artifacts.publish so that manifests and
their hashes are real); the expected card values come from those manifests and ../shared/data/README.md."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignment import artifacts
from alignment.hub import HubError, build_card, data_origin, plan_upload, push, read_lineage
from tests.helpers import run_cli_in_process

DATA = Path("/data")  # sources are named as resolved configs name them; only the folder names matter here
HH = str(DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")
GSM8K = str(DATA / "gsm8k" / "example_model_solutions.jsonl")
DIAGNOSTICS = {
    "n_pairs": 40,
    "accuracy": 0.675,
    "accuracy_ci95": [0.52, 0.80],
    "tie_fraction": 0.025,
    "mean_margin": 0.31,
    "length_pearson": 0.12,
    "length_spearman": 0.08,
    "prefers_longer": 0.55,
    "chosen_is_longer": 0.5,
    "calibration": [{"bucket": 0, "abs_margin_min": 0.0, "abs_margin_max": 0.1, "n": 20, "accuracy": 0.55}],
    "warnings": ["accuracy CI includes 0.5 for source x"],
}


def pipeline_config(model: str, entity: str | None = None, **sources: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "test",
        "model": {"name_or_path": model, "tuning": {"method": "full"}},
        "tracking": {"mode": "offline", "project": "align-proj", "entity": entity},
    }
    for stage, source in sources.items():
        config[stage] = {"data": {"source": source}, "learning_rate": 1e-5}
    config.setdefault("ppo", {})["reward_model"] = "reward"
    return config


def publish(
    folder: Path,
    stage: str,
    config: dict[str, Any],
    files: dict[str, bytes | str],
    inputs: dict[str, Path] | None = None,
    data: dict[str, str] | None = None,
    model_kind: str = "full",
    wandb_run_id: str | None = "run-id",
) -> Path:
    """An artifact as a stage publishes it: files, resolved_config.yaml, metrics.json, MANIFEST.json last."""
    staging = folder.parent / f".{folder.name}.staging"
    staging.mkdir(parents=True)
    for name, content in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (staging / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"train_loss": 0.5, "global_step": 8, "train_runtime": 3.0}
    (staging / "metrics.json").write_text(json.dumps(metrics))
    manifest = {
        "stage": stage,
        "config_hash": f"{stage}-config-hash",
        "inputs": {name: artifacts.input_record(path) for name, path in (inputs or {}).items()},
        "data": data or {"train": f"{stage}-train-hash", "train_eval": f"{stage}-heldout-hash"},
        "model_kind": model_kind,
        "code_version": "0.1.0+test",
        "wandb_run_id": wandb_run_id and f"{stage}-{wandb_run_id}",
        "wandb_group": "group-1" if wandb_run_id else None,
        "world_size": 2,
        "precision": {"trained_weights": "float32", "bf16_autocast": False},
        "wall_time_s": 12.0,
        "metrics": metrics,
    }
    return artifacts.publish(staging, folder, manifest)


WEIGHTS = {
    "model.safetensors": b"weights",
    "config.json": "{}",
    "tokenizer.json": "{}",
    "chat_template.jinja": "t",
}


@pytest.fixture
def chain(tmp_path: Path) -> dict[str, Path]:
    """sft (built-in tasks) -> reward (HH, MIT) -> ppo (GSM8K, MIT), from the embedded SmolLM2 (Apache-2.0)."""
    config = pipeline_config("smollm2-135m-instruct", sft="builtin:tasks", reward=HH, ppo=GSM8K)
    run = tmp_path / "run"
    sft = publish(run / "sft", "sft", config, WEIGHTS)
    reward_files = {
        **WEIGHTS,
        "diagnostics.json": json.dumps(DIAGNOSTICS),
        "normalization.json": json.dumps({"mean": 0.25, "std": 2.0, "n": 32, "source": "chosen responses"}),
    }
    reward = publish(run / "reward", "reward", config, reward_files, {"sft": sft})
    ppo = publish(
        run / "ppo", "ppo", config, WEIGHTS, {"sft": sft, "reward": reward}, {"train": "ppo-prompts"}
    )
    return {"sft": sft, "reward": reward, "ppo": ppo}


# -------------------------------------------------------------------------------------------------- the card
def test_card_metadata_follows_the_lineage(chain: dict[str, Path]) -> None:
    card, node, adapter_repo = build_card(chain["ppo"], "org/ppo-model")

    assert adapter_repo is None
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model_relation == "finetune"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"trl", "sft", "reward-model", "ppo", "rlhf"} <= set(card.data.tags)
    # built-in tasks and the base: Apache-2.0; HH and GSM8K: MIT -> two licenses, named
    assert (card.data.license, card.data.license_name) == ("other", "apache-2.0-and-mit")
    assert card.data.datasets == ["Anthropic/hh-rlhf", "openai/gsm8k"]
    sft, reward = node.upstream("sft"), node.upstream("reward")
    assert (sft.stage, reward.stage) == ("sft", "reward")  # type: ignore[union-attr]
    assert reward.upstream("sft") is sft  # type: ignore[union-attr]  # one node per artifact


def test_card_body_names_every_stage_hash_and_data_snapshot(chain: dict[str, Path]) -> None:
    card, _, _ = build_card(chain["ppo"], "org/ppo-model")
    body = card.text

    for stage, path in chain.items():
        manifest = artifacts.read_manifest(path)
        row = next(line for line in body.splitlines() if line.startswith(f"| {stage}") and "config" in line)
        assert f"`{manifest['config_hash']}`" in row and f"`{artifacts.manifest_hash(path)}`" in row
        for name, snapshot in manifest["data"].items():
            data_row = f"| {stage} | {name} | `{snapshot}` |"
            assert data_row in body
    assert "sft: `" + artifacts.manifest_hash(chain["sft"]) + "`" in body  # ppo's and reward's recorded input
    hh_row = next(line for line in body.splitlines() if "`reward-train-hash`" in line)
    assert "hh-rlhf/harmless-base/test.jsonl.gz" in hh_row and hh_row.endswith("| mit |")
    assert "| accuracy (95% CI) | 0.675 (0.52-0.8) |" in body  # the reward input's diagnostics.json
    assert "warning: accuracy CI includes 0.5 for source x" in body
    assert "mean 0.25, std 2" in body
    assert "ppo optimised the reward `reward`" in body
    assert "## Evaluation" not in body  # no eval.json beside the run
    assert 'AutoModelForCausalLM.from_pretrained("org/ppo-model")' in body


def test_reward_diagnostics_only_when_a_reward_model_is_in_the_lineage(chain: dict[str, Path]) -> None:
    sft_card, _, _ = build_card(chain["sft"], "org/sft")
    reward_card, _, _ = build_card(chain["reward"], "org/rm")

    assert "Reward model diagnostics" not in sft_card.text
    assert "Reward model diagnostics" in reward_card.text
    assert reward_card.data.pipeline_tag == "text-classification"
    assert "AutoModelForSequenceClassification" in reward_card.text
    assert "rlhf" not in sft_card.data.tags


def test_license_single_unknown_and_from_a_license_file(tmp_path: Path) -> None:
    one = publish(
        tmp_path / "a" / "sft", "sft", pipeline_config("tiny-random-llama", sft="builtin:tasks"), WEIGHTS
    )
    card, _, _ = build_card(one, "org/a")
    assert (card.data.license, card.data.license_name, card.data.base_model) == ("apache-2.0", None, None)

    hub = publish(
        tmp_path / "b" / "sft", "sft", pipeline_config("org/base", sft="hub:someone/pairs"), WEIGHTS
    )
    card, _, _ = build_card(hub, "org/b")
    assert card.data.license is None and card.data.datasets == ["someone/pairs"]
    assert card.data.base_model == "org/base"
    assert "No license is set" in card.text and "see the card of org/base" in card.text

    own = tmp_path / "mine" / "pairs.jsonl"
    own.parent.mkdir()
    own.write_text("{}\n")
    (own.parent / "LICENSE").write_text("Creative Commons Attribution 4.0 International\n")
    assert data_origin(str(own)).license == "cc-by-4.0"
    assert data_origin("service:prefs@3").license is None
    assert (
        "not be used for training"
        in data_origin(str(DATA / "self-instruct" / "user_oriented_instructions.jsonl")).note
    )


def test_an_upstream_published_again_is_reported_not_described(chain: dict[str, Path]) -> None:
    config = pipeline_config("smollm2-135m-instruct", sft="builtin:tasks")
    recorded = artifacts.manifest_hash(chain["sft"])
    shutil.rmtree(chain["sft"])
    publish(chain["sft"], "sft", config, WEIGHTS, data={"train": "another-snapshot"})

    card, node, _ = build_card(chain["ppo"], "org/ppo-model")

    assert node.upstream("sft") is None
    assert "published again after this one was trained" in card.text
    assert recorded in card.text and "another-snapshot" not in card.text


def test_not_a_complete_artifact(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(HubError, match="not a complete artifact: it has no MANIFEST.json"):
        read_lineage(tmp_path / "half")


# -------------------------------------------------------------------------------------------------- evaluation
EVAL_METRICS = {
    "gold": {"mean": 0.6, "ci95_half_width": 0.1, "n": 50},
    "rm_score": {"mean": 1.25, "ci95_half_width": 0.5, "n": 50},
    "kl": {"mean": 2.0, "ci95_half_width": 0.25, "n": 50, "estimator": "k1"},
    "length": {"mean": 30.0, "ci95_half_width": 2.0, "n": 50},
    "eos_rate": 0.9,
    "reference": {"gold": {"mean": 0.4, "ci95_half_width": 0.125, "n": 50}},
    "win_rate_gold": {
        "wins": 20,
        "ties": 25,
        "losses": 5,
        "n": 50,
        "win_rate": 0.4,
        "ci95_half_width": 0.136,
    },
}


def write_eval(folder: Path, policy: Path, best_of: int = 1) -> Path:
    folder.mkdir(parents=True)
    result = {
        "policy": str(policy),
        "reference": "/x/sft",
        "rm": "/x/reward",
        "gold": "rule:tasks",
        "best_of": best_of,
        "prompts": {"source": "builtin:tasks", "split": "test"},
        "n_prompts": 50,
        "decoding": {"max_new_tokens": 64, "temperature": 1.0},
        "metrics": EVAL_METRICS,
    }
    (folder / "eval.json").write_text(json.dumps(result))
    return folder / "eval.json"


def test_eval_figures_with_intervals_found_beside_the_run(chain: dict[str, Path]) -> None:
    run = chain["ppo"].parent
    write_eval(run / "eval-ppo", chain["ppo"])
    write_eval(run / "eval-sft", chain["sft"])  # another artifact's: not this card's
    write_eval(run / "eval" / "bon", chain["ppo"], best_of=4)  # best-of-n evaluates a procedure: left out

    body = build_card(chain["ppo"], "org/ppo-model")[0].text

    assert body.count("## Evaluation") == 1 and body.count("Means with 95% confidence intervals") == 1
    assert "| gold score | 0.6 ± 0.1 | 0.4 ± 0.125 | 50 |" in body
    assert "| KL to reference (k1) | 2 ± 0.25 | - | 50 |" in body
    assert "Win rate against the reference by gold: 0.4 ± 0.136 (wins 20, ties 25, losses 5 of 50)" in body


def test_eval_option_must_evaluate_this_artifact(chain: dict[str, Path], tmp_path: Path) -> None:
    other = write_eval(tmp_path / "elsewhere", chain["sft"])
    with pytest.raises(HubError, match="evaluates .*sft, not"):
        build_card(chain["ppo"], "org/ppo-model", eval_path=other)
    mine = write_eval(tmp_path / "mine", chain["ppo"])
    assert "| gold score | 0.6 ± 0.1 |" in build_card(chain["ppo"], "org/m", eval_path=mine.parent)[0].text


# -------------------------------------------------------------------------------------------------- W&B
def test_wandb_links_from_the_manifest_and_config(tmp_path: Path) -> None:
    config = pipeline_config("tiny-random-llama", entity="team", sft="builtin:tasks")
    sft = publish(tmp_path / "run" / "sft", "sft", config, WEIGHTS)
    (tmp_path / "run" / "wandb" / "offline-run-20260101_000000-sft-run-id").mkdir(parents=True)

    body = build_card(sft, "org/x")[0].text

    assert "[run sft-run-id](https://wandb.ai/team/align-proj/runs/sft-run-id)" in body
    assert "[group group-1](https://wandb.ai/team/align-proj/groups/group-1)" in body
    assert "logged offline" in body

    untracked = publish(tmp_path / "other" / "sft", "sft", config, WEIGHTS, wandb_run_id=None)
    assert "- sft: not tracked (W&B disabled)" in build_card(untracked, "org/y")[0].text
    no_entity = publish(tmp_path / "third" / "sft", "sft", pipeline_config("m", sft="builtin:tasks"), WEIGHTS)
    text = build_card(no_entity, "org/z", wandb_entity=None)[0].text
    assert "run `sft-run-id` in project `align-proj`" in text and "wandb.ai" not in text
    assert (
        "https://wandb.ai/me/align-proj/runs/sft-run-id"
        in build_card(no_entity, "org/z", wandb_entity="me")[0].text
    )


# -------------------------------------------------------------------------------------------------- the plan
def test_plan_lists_publishable_files_and_never_pickles(tmp_path: Path) -> None:
    files = {
        **WEIGHTS,
        "tokenizer_config.json": "{}",
        "generation_config.json": "{}",
        "log_history.json": "[]",
        "training_args.bin": b"pickle",
        "optimizer.pt": b"pickle",
        "model_source.json": "{}",
        "README.md": "a card PEFT wrote",
        "notes.txt": "x",
        "checkpoint-4/model.safetensors": b"w",
    }
    artifact = publish(tmp_path / "sft", "sft", pipeline_config("m", sft="builtin:tasks"), files)
    card, node, _ = build_card(artifact, "org/x")

    plan = plan_upload(node, "org/x", True, card)

    assert [f.path_in_repo for f in plan.files] == [
        "MANIFEST.json",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "log_history.json",
        "metrics.json",
        "model.safetensors",
        "resolved_config.yaml",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ]
    assert plan.files[-1].content == str(card).encode()
    assert plan.files[6].size == len(b"weights")
    left_out = dict(plan.left_out)
    assert set(left_out) == {
        "training_args.bin",
        "optimizer.pt",
        "model_source.json",
        "README.md",
        "notes.txt",
        "checkpoint-4/model.safetensors",
    }
    assert "pickle" in left_out["training_args.bin"] and "pickle" in left_out["optimizer.pt"]


def test_an_artifact_without_top_level_weights_is_refused(tmp_path: Path) -> None:
    files = {"checkpoint-4/model.safetensors": b"w", "config.json": "{}"}
    artifact = publish(tmp_path / "sft", "sft", pipeline_config("m", sft="builtin:tasks"), files)
    card, node, _ = build_card(artifact, "org/x")
    with pytest.raises(HubError, match="has no weights to publish"):
        plan_upload(node, "org/x", False, card)


def test_a_pickle_only_artifact_is_refused(tmp_path: Path) -> None:
    files = {"pytorch_model.bin": b"pickle", "config.json": "{}", "tokenizer.json": "{}"}
    artifact = publish(tmp_path / "sft", "sft", pipeline_config("m", sft="builtin:tasks"), files)
    card, node, _ = build_card(artifact, "org/x")
    with pytest.raises(HubError, match=r"only as pickles \(pytorch_model.bin\).*safe_serialization=True"):
        plan_upload(node, "org/x", False, card)


# -------------------------------------------------------------------------------------------------- adapters
def adapter_files(base_path: str) -> dict[str, bytes | str]:
    config = {"base_model_name_or_path": base_path, "peft_type": "LORA", "r": 8}
    return {
        "adapter_config.json": json.dumps(config),
        "adapter_model.safetensors": b"adapter",
        "tokenizer.json": "{}",
        "README.md": "PEFT's own card",
    }


def test_an_adapter_card_names_its_base_and_loads_with_peft(tmp_path: Path) -> None:
    config = pipeline_config("smollm2-135m-instruct", sft="builtin:tasks")
    config["model"]["tuning"]["method"] = "lora"
    files = adapter_files("/home/u/.cache/alignment/models/smollm2-135m-instruct")
    artifact = publish(tmp_path / "sft", "sft", config, files, model_kind="adapter")

    card, node, adapter_repo = build_card(artifact, "org/sft-lora")
    plan = plan_upload(node, "org/sft-lora", False, card, adapter_repo)

    assert adapter_repo == card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    assert {"peft", "lora"} <= set(card.data.tags)
    assert 'AutoPeftModelForCausalLM.from_pretrained("org/sft-lora")' in card.text
    assert "de-quantised" in card.text
    uploaded = {f.path_in_repo: f for f in plan.files}
    rewritten = json.loads(uploaded["adapter_config.json"].content)
    assert rewritten == {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft_type": "LORA",
        "r": 8,
    }
    assert uploaded["README.md"].content == str(card).encode()


def test_an_adapter_over_an_upstream_artifact_needs_its_hub_repo(chain: dict[str, Path]) -> None:
    config = pipeline_config("smollm2-135m-instruct", sft="builtin:tasks", dpo=HH)
    files = adapter_files(str(chain["sft"].parent / ".work" / "dpo" / "init_model"))
    dpo = publish(
        chain["sft"].parent / "dpo", "dpo", config, files, {"sft": chain["sft"]}, model_kind="adapter"
    )

    with pytest.raises(
        HubError, match=r"applies to the weights of its input artifact .*--base-model ORG/NAME"
    ):
        build_card(dpo, "org/dpo")
    card, node, adapter_repo = build_card(dpo, "org/dpo", base_model_override="org/sft-full")
    assert adapter_repo == card.data.base_model == "org/sft-full"
    assert "loads org/sft-full, then this adapter" in card.text


# -------------------------------------------------------------------------------------------------- push
class FakeApi:
    """Records what push asks of the Hub; answers as a Hub with one earlier push of an adapter would."""

    def __init__(self, existing: list[str] | None = None, private: bool = True) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.existing = existing or []
        self.private = private

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0]}"

    def repo_info(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("repo_info", args, kwargs))
        return type("Info", (), {"private": self.private})()

    def list_repo_files(self, *args: Any, **kwargs: Any) -> list[str]:
        self.calls.append(("list_repo_files", args, kwargs))
        return list(self.existing)

    def create_commit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("create_commit", args, kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{args[0]}/commit/abc"})()


def test_push_creates_a_private_repo_and_uploads_the_plan_in_one_commit(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = FakeApi(existing=[".gitattributes", "adapter_config.json", "adapter_model.safetensors", "notes.md"])
    out = tmp_path / "out"

    plan = push(chain["reward"], "org/rm", private=True, out=out, api=api, log=lambda *_: None)

    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "repo_info", "list_repo_files", "create_commit"]
    assert api.calls[0][1] == ("org/rm",)
    assert api.calls[0][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    operations = api.calls[3][2]["operations"]
    added = {op.path_in_repo: op for op in operations if isinstance(op, CommitOperationAdd)}
    deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
    assert sorted(added) == sorted(f.path_in_repo for f in plan.files)
    assert {
        "model.safetensors",
        "diagnostics.json",
        "normalization.json",
        "MANIFEST.json",
        "README.md",
    } <= set(added)
    assert added["model.safetensors"].path_or_fileobj == str(chain["reward"] / "model.safetensors")
    # files an earlier push of an adapter left there go; the user's own notes stay
    assert deleted == ["adapter_config.json", "adapter_model.safetensors"]
    assert (out / "README.md").read_bytes() == added["README.md"].path_or_fileobj
    record = json.loads((out / "plan.json").read_text())
    assert record["commit"] == "https://huggingface.co/org/rm/commit/abc" and record["private"] is True


def test_push_refuses_an_existing_public_repo_when_asked_for_private(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    api = FakeApi(private=False)
    with pytest.raises(HubError, match="exists and is public; nothing was uploaded"):
        push(chain["sft"], "org/sft", private=True, out=tmp_path, api=api, log=lambda *_: None)
    assert "create_commit" not in [name for name, _, _ in api.calls]


def test_dry_run_touches_no_hub_and_writes_card_and_plan(chain: dict[str, Path], tmp_path: Path) -> None:
    api = FakeApi()
    lines: list[str] = []
    push(chain["ppo"], "org/ppo", dry_run=True, out=tmp_path, api=api, log=lines.append)

    assert api.calls == []
    assert (
        (tmp_path / "README.md")
        .read_text()
        .startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct")
    )
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["repo_id"] == "org/ppo" and "commit" not in record
    assert re.search(r"model\.safetensors +7 B +weights", lines[0])
    assert "dry run: nothing is uploaded" in lines[0]


def test_cli_push_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, chain: dict[str, Path]) -> None:
    (tmp_path / "half").mkdir()
    code, _, err = run_cli_in_process(capsys, "push", str(tmp_path / "half"), "--repo", "org/x", "--dry-run")
    assert code == 2 and "not a complete artifact" in err
    code, _, err = run_cli_in_process(
        capsys, "push", str(chain["sft"]), "--repo", "no-namespace", "--dry-run"
    )
    assert code == 2 and "ORG/NAME" in err
    code, out, _ = run_cli_in_process(
        capsys, "push", str(chain["sft"]), "--repo", "org/x", "--dry-run", "--out", str(tmp_path / "o")
    )
    assert code == 0 and "org/x (public)" in out and (tmp_path / "o" / "README.md").is_file()


def test_the_cards_loading_code_runs_on_the_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file() and p.name != "PREPARED"
    }
    artifact = publish(
        tmp_path / "sft", "sft", pipeline_config("tiny-random-llama", sft="builtin:tasks"), files
    )
    card, _, _ = build_card(artifact, "org/tiny")

    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)  # type: ignore[union-attr]
    code = code.replace('"org/tiny"', repr(str(artifact))).replace("max_new_tokens=64", "max_new_tokens=2")
    exec(compile(code, "card", "exec"), {"print": lambda *_: None})


def test_a_real_push_needs_the_network_and_a_login(
    chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):  # conftest sets it, as offline users do
        push(chain["sft"], "org/sft", out=tmp_path, log=lambda *_: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="not logged in to the Hugging Face Hub: run `hf auth login`"):
        push(chain["sft"], "org/sft", out=tmp_path, log=lambda *_: None)
