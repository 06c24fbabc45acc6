"""`alignment compare` and `alignment eval` end to end through the CLI on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.helpers import REPO, run_cli, run_cli_in_process, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("compare")
    pipeline = write_config(tmp)
    config = yaml.safe_load((REPO / "configs" / "compare" / "smoke.yaml").read_text())
    config.update(pipeline=str(pipeline), output_dir=str(tmp / "out"))
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("compare", str(path))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return path, tmp / "out", result.stdout


def test_compare_writes_the_report_plots_and_one_wandb_group(comparison: tuple[Path, Path, str]) -> None:
    _, out, stdout = comparison
    report = (out / "report.md").read_text()
    for row in (
        "| sft | - | 1 |",
        "| ppo | kl_coef=0.05 | 1 |",
        "| dpo | beta=0.1 | 1 |",
        "| best-of-n | n=4 | 1 |",
    ):
        assert row in report
    assert "## Summary" in report and "Highest gold score" in report
    data = json.loads((out / "compare.json").read_text())
    rows = {row["arm"]: row for row in data["rows"]}
    assert rows["sft"]["kl"]["mean"] == 0.0
    assert rows["best-of-n"]["kl"]["mean"] == pytest.approx(math.log(4) - 0.75)
    assert rows["ppo"]["num_tokens"] > 0 and rows["dpo"]["num_tokens"] > 0 and rows["dpo"]["wall_time_s"] > 0
    assert (
        rows["best-of-n"]["wall_time_s"] is None and rows["best-of-n"]["num_tokens"] is None
    )  # trains nothing
    for arm in ("ppo", "dpo", "best-of-n"):
        wins = rows[arm]["win_rate_rm"]["mean"]
        assert 0.0 <= wins <= 1.0 and 0.0 <= rows[arm]["gold"]["mean"] <= 1.0
    group = data["wandb_group"]
    manifests = [out / "base" / "sft", out / "base" / "reward"] + [
        out / "arms" / arm / setting / "seed-1" / stage
        for arm, setting, stage in (("ppo", "kl_coef=0.05", "ppo"), ("dpo", "beta=0.1", "dpo"))
    ]
    for artifact in manifests:
        assert json.loads((artifact / "MANIFEST.json").read_text())["wandb_group"] == group, artifact
    assert list((out / "wandb").glob("offline-run-*")), "the comparison's own W&B run"
    for name in ("frontier", "overoptimisation", "training_curves"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG"
            image.load()
            series = json.loads(image.text["series"])
        if name == "frontier":
            assert set(series) == {"sft", "ppo", "dpo", "best-of-n"}
        if name == "training_curves":
            assert (
                set(series["loss"]) == {"ppo kl_coef=0.05", "dpo beta=0.1"}
                and series["reward"]["ppo kl_coef=0.05"]
            )
    samples = (
        (out / "arms" / "dpo" / "beta=0.1" / "seed-1" / "eval" / "samples.jsonl").read_text().splitlines()
    )
    assert len(samples) == 16 and {
        "completion",
        "reference_completion",
        "gold_score",
        "rm_score",
        "kl",
    } <= set(json.loads(samples[0]))
    assert "best-of-n" in stdout


def test_compare_reports_paired_statistics_every_score_and_how_to_reproduce(
    comparison: tuple[Path, Path, str],
) -> None:
    """The paired comparisons use the scores the evaluations wrote; compare.json holds every one of them;
    report.md says how to reproduce it, with each artifact's config hash as its manifest records it."""
    path, out, _ = comparison
    report = (out / "report.md").read_text()
    for heading in ("## Paired comparisons", "## Gold at equal KL", "## Over-optimisation", "## Reproduce"):
        assert heading in report
    data = json.loads((out / "compare.json").read_text())
    samples = [json.loads(line) for line in (out / "base" / "eval" / "seed-1" / "samples.jsonl").open()]
    assert data["reference_scores"]["1"]["gold"] == [s["gold_score"] for s in samples]
    assert data["reference_scores"]["1"]["rm"] == [s["rm_score"] for s in samples]
    assert data["reference_scores"]["1"]["sample"] == [0] * 16 and len(data["prompts"]) == 16
    for result in data["results"]:
        records = [json.loads(line) for line in (Path(result["directory"]) / "eval" / "samples.jsonl").open()]
        assert result["scores"]["prompt_index"] == [r["prompt_index"] for r in records]
        assert result["scores"]["gold"] == [r["gold_score"] for r in records]
        assert (result["scores"]["kl"] is None) == (result["stage"] == "best_of_n")  # analytic KL only
    comparisons = {c["name"]: c for c in data["analysis"]["comparisons"]}
    assert {"ppo (kl_coef=0.05) - sft", "dpo (beta=0.1) - sft", "best-of-n (n=4) - sft"} <= set(comparisons)
    dpo = comparisons["dpo (beta=0.1) - sft"]
    gold = data["results"][[r["arm"] for r in data["results"]].index("dpo")]["scores"]["gold"]
    assert dpo["mean"] == pytest.approx((sum(gold) - sum(data["reference_scores"]["1"]["gold"])) / 16)
    binary = all(g in (0.0, 1.0) for g in gold + data["reference_scores"]["1"]["gold"])  # rule:tasks: [0, 1]
    assert dpo["test"] == (
        "McNemar exact" if binary else "paired bootstrap"
    )  # one seed, one sample per prompt
    assert dpo["ci_low"] <= dpo["mean"] <= dpo["ci_high"] and dpo["p_holm"] >= dpo["p_value"]
    assert f"| {dpo['name']} | 1 | 16 |" in report
    provenance = data["provenance"]
    assert provenance["command"] == f"alignment compare {path}" and f"`{provenance['command']}`" in report
    assert provenance["evaluation_engine"]["dtype"] in report.split("## Reproduce")[1]
    for artifact in (out / "base" / "sft", out / "arms" / "dpo" / "beta=0.1" / "seed-1" / "dpo"):
        manifest = json.loads((artifact / "MANIFEST.json").read_text())
        assert f"| `{artifact}` | {manifest['stage']} | `{manifest['config_hash']}` |" in report


def test_a_second_compare_reuses_every_finished_arm(comparison: tuple[Path, Path, str]) -> None:
    path, out, _ = comparison
    evals = sorted(out.glob("**/eval.json"))
    assert len(evals) == 4  # the SFT policy and three arms
    before = {p: p.stat().st_mtime_ns for p in evals}
    again = run_cli("compare", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    for record_path in [out / "base" / "run.json", *out.glob("arms/*/*/seed-*/run.json")]:
        record = json.loads(record_path.read_text())
        assert [s["status"] for s in record["stages"]] == ["skipped"] * len(record["stages"]), record_path
    assert {p: p.stat().st_mtime_ns for p in evals} == before  # no evaluation ran again


def test_eval_of_a_policy_against_itself(comparison: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, out, _ = comparison
    sft = out / "base" / "sft"
    result = run_cli(
        "eval", "--policy", str(sft), "--reference", str(sft), "--prompts", "builtin:tasks",
        "--prompts-option", "split=test", "--prompts-option", "task_count=6", "--rm", str(out / "base" / "reward"),
        "--gold", "rule:tasks", "--max-new-tokens", "6", "--samples-per-prompt", "2", "--out", str(tmp_path / "e"),
        "--tracking", "disabled",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "e" / "eval.json").read_text())["metrics"]
    assert metrics["kl"]["n"] == 12 and metrics["kl"]["mean"] == pytest.approx(0.0, abs=1e-6)
    for judge in ("win_rate_rm", "win_rate_gold"):  # same weights, same seed: the same responses, all ties
        assert metrics[judge]["ties"] == 12 and metrics[judge]["wins"] == 0
    assert len((tmp_path / "e" / "samples.jsonl").read_text().splitlines()) == 12
    assert "win_rate_gold vs reference" in result.stdout


def test_eval_errors_name_the_option(comparison: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, out, _ = comparison
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    no_gold = run_cli(
        "eval", "--policy", str(out / "base" / "sft"), "--prompts", str(prompts), "--gold", "rule:tasks"
    )
    assert no_gold.returncode == 2 and "--gold rule:tasks" in no_gold.stderr and "gold" in no_gold.stderr
    bad_rm = run_cli(
        "eval", "--policy", str(out / "base" / "sft"), "--prompts", str(prompts), "--rm", "nowhere"
    )
    assert bad_rm.returncode == 2 and "--rm nowhere" in bad_rm.stderr


def test_every_shipped_compare_config_dry_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted((REPO / "configs" / "compare").glob("*.yaml")):
        code, out, err = run_cli_in_process(
            capsys, "compare", str(path), f"output_dir={tmp_path / path.stem}", "--dry-run"
        )
        assert code == 0, (path, err[-2000:])
        config = yaml.safe_load(path.read_text())
        for arm in config["arms"]:
            if arm["stage"] != "best_of_n":
                assert f"alignment.stages.{arm['stage']}" in out, (path, arm)
                assert f"{arm['name']} " in out, (path, arm)


def test_an_arm_that_fails_is_reported_and_the_others_still_run(comparison: tuple[Path, Path, str]) -> None:
    """An arm whose stage fails (here: a PPO batch that does not divide) does not stop the comparison: the finished
    arms are reused and evaluated, the report lists the failed arm with its error, and the exit code says so."""
    path, out, _ = comparison
    config = yaml.safe_load(path.read_text())
    config["arms"].append({"name": "ppo-bad", "stage": "ppo", "sweep": {"rollout_batch_size": [6]}})
    failing = path.with_name("compare-with-a-failing-arm.yaml")
    failing.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("compare", str(failing))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "arm ppo-bad rollout_batch_size=6 seed 1 did not train" in result.stdout
    error = "ValueError: ppo.rollout_batch_size=6 (prompts per process per iteration) must be a multiple"
    assert error in result.stdout
    report = (out / "report.md").read_text()
    assert "## Arms that did not train" in report
    assert f"- ppo-bad rollout_batch_size=6 seed 1: {error}" in report
    for row in ("| ppo | kl_coef=0.05 | 1 |", "| dpo | beta=0.1 | 1 |", "| best-of-n | n=4 | 1 |"):
        assert row in report  # the other arms are still compared
    assert "ppo-bad" not in report.split("## Arms that did not train")[0]
    failed = json.loads((out / "compare.json").read_text())["failed"]
    assert [(f["arm"], f["setting"]) for f in failed] == [("ppo-bad", {"rollout_batch_size": 6})]
