"""Comparison statistics, the plain-words summary and the plots of alignment.report / alignment.evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from alignment.evaluate import best_of_n_kl, distinct_n, win_rate
from alignment.report import aggregate, plot_frontier, plot_overoptimisation, seed_interval, summary_lines


def test_win_rate_counts_ties_apart() -> None:
    result = win_rate([1.0, 0.5, 0.2, 0.3, 0.9], [0.5, 0.5, 0.7, 0.3, 0.1])
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (2, 2, 1, 5)
    assert result["win_rate"] == pytest.approx(0.4) and result["tie_rate"] == pytest.approx(0.4)
    assert result["win_rate_excluding_ties"] == pytest.approx(2 / 3)
    assert result["ci95_half_width"] == pytest.approx(1.96 * math.sqrt(0.4 * 0.6 / 5))
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_seed_interval_uses_students_t() -> None:
    mean, half = seed_interval([1.0, 3.0])  # sd = sqrt(2), t(1) = 12.706
    assert mean == 2.0 and half == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    mean, half = seed_interval([1.0, 2.0, 3.0])  # sd = 1, t(2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(seed_interval([5.0])[1])


def test_distinct_n_and_best_of_n_kl() -> None:
    assert distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n([""], 2) == 0.0
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def _metrics(gold: float, rm: float, kl: float, half: float = 0.01) -> dict:
    return {
        "gold": {"mean": gold, "ci95_half_width": half, "n": 64},
        "rm_score": {"mean": rm, "ci95_half_width": half, "n": 64},
        "kl": {"mean": kl, "ci95_half_width": half, "n": 64},
        "length": {"mean": 20.0, "ci95_half_width": 1.0, "n": 64},
        "eos_rate": 1.0,
    }


def _results(arm: str, stage: str, points: list[tuple[float, float, float]], name: str = "kl_coef") -> list:
    """Two seeds per setting, each seed shifted by +-0.005 so the interval over seeds is known."""
    results = []
    for index, (gold, rm, kl) in enumerate(points):
        for shift in (-0.005, 0.005):
            results.append(
                {
                    "arm": arm,
                    "stage": stage,
                    "setting": {name: index},
                    "seed": 1 if shift < 0 else 2,
                    "metrics": _metrics(gold + shift, rm + shift, kl + shift),
                    "wall_time_s": 10.0,
                    "num_tokens": 1000.0,
                    "curve": [],
                }
            )
    return results


REFERENCE = {"metrics": {1: _metrics(0.30, 0.0, 0.0), 2: _metrics(0.30, 0.0, 0.0)}, "wall_time_s": 5.0}


def test_summary_names_over_optimisation_only_when_the_numbers_show_it() -> None:
    over = _results("ppo", "ppo", [(0.60, 0.5, 1.0), (0.40, 2.0, 8.0)])  # proxy up, gold down, far apart
    steady = _results("dpo", "dpo", [(0.50, 0.4, 0.5), (0.55, 0.6, 2.0)], name="beta")
    rows = aggregate(REFERENCE, over + steady)
    assert [r["arm"] for r in rows] == ["sft", "ppo", "ppo", "dpo", "dpo"]
    assert rows[1]["gold"]["mean"] == pytest.approx(0.60)
    assert rows[1]["gold"]["ci95"] == pytest.approx(12.706 * math.sqrt(2 * 0.005**2) / math.sqrt(2))
    lines = summary_lines(rows)
    assert lines[0].startswith("Highest gold score: ppo (kl_coef=0)")
    assert "non-overlapping" in lines[0]  # 0.60 vs SFT 0.30
    assert any(
        line.startswith("ppo: the proxy RM score rises") and "over-optimised" in line for line in lines
    )
    assert not any("over-optimised" in line for line in lines if line.startswith("dpo"))


def test_summary_claims_no_gain_when_intervals_overlap() -> None:
    close = _results("dpo", "dpo", [(0.31, 0.1, 0.2)], name="beta")
    for result in close:
        result["metrics"]["gold"]["mean"] = 0.31 + (0.2 if result["seed"] == 1 else -0.2)  # noisy seeds
    lines = summary_lines(aggregate(REFERENCE, close))
    assert "does not show a gain over SFT" in lines[0]


def test_plots_are_pngs_that_carry_their_series(tmp_path: Path) -> None:
    rows = aggregate(REFERENCE, _results("ppo", "ppo", [(0.6, 0.5, 1.0), (0.4, 2.0, 8.0)]))
    frontier = plot_frontier(rows, tmp_path / "frontier.png")
    over = plot_overoptimisation(rows, tmp_path / "over.png")
    for path, expected in ((tmp_path / "frontier.png", frontier), (tmp_path / "over.png", over)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300
            image.load()
            series = json.loads(image.text["series"])
        assert series == json.loads(json.dumps(expected))
    assert [p["kl"] for p in frontier["ppo"]] == pytest.approx([1.0, 8.0])
    assert [p["gold"] for p in frontier["ppo"]] == pytest.approx([0.6, 0.4])
    assert frontier["sft"] == [
        pytest.approx({"setting": "-", "kl": 0.0, "kl_ci95": 0.0, "gold": 0.3, "gold_ci95": 0.0})
    ]
    assert set(over) == {"proxy", "gold"} and [p["rm_score"] for p in over["proxy"]["ppo"]] == pytest.approx(
        [0.5, 2.0]
    )


# ------------------------------------------------------------------------------- paired statistics in the report
def _measured(scores: dict, kl: float | None) -> dict:
    """An evaluation's figures from its per-prompt scores (what alignment.evaluate computes)."""
    gold = scores["gold"]
    metrics = {"gold": {"mean": sum(gold) / len(gold), "ci95_half_width": 0.05, "n": len(gold)}}
    if scores.get("rm") is not None:
        metrics["rm_score"] = {"mean": sum(scores["rm"]) / len(gold), "ci95_half_width": 0.05, "n": len(gold)}
    if kl is not None:
        metrics["kl"] = {"mean": kl, "ci95_half_width": 0.0, "n": len(gold)}
    return metrics


def _comparison(crafted: tuple[dict, list]) -> tuple[dict, list]:
    scores, results = crafted
    reference = {
        "metrics": {seed: _measured(s, 0.0) for seed, s in scores.items()},
        "scores": scores,
        "wall_time_s": 5.0,
    }
    for result in results:
        kl = (result["metrics"].get("kl") or {}).get("mean")
        if kl is None and result["scores"].get("kl"):
            kl = sum(result["scores"]["kl"]) / len(result["scores"]["kl"])
        result["metrics"] = _measured(result["scores"], kl if kl is not None else 0.5)
        result |= {"wall_time_s": 10.0, "num_tokens": 100.0, "curve": []}
    return reference, results


def test_summary_from_paired_statistics_names_what_is_significant() -> None:
    from alignment.statistics import analyse
    from tests.unit.test_statistics import crafted_binary

    reference, results = _comparison(crafted_binary())
    rows = aggregate(reference, results)
    lines = summary_lines(rows, analyse(reference["scores"], results, replicates=1000))
    assert lines[0].startswith("Highest gold score: dpo (beta=0.1)")
    assert "above the SFT policy's 0.250: paired difference +0.450" in lines[0]
    assert "McNemar exact, Holm-adjusted p = 0.0117): significant" in lines[0]
    assert lines[1].startswith("ppo's best setting (kl_coef=0.05)") and "below the best arm" in lines[1]
    overview = next(line for line in lines if line.startswith("Of the 3 paired comparisons"))
    assert "significant: dpo (beta=0.1) - sft, ppo (kl_coef=0.05) - dpo (beta=0.1);" in overview
    assert "not significant: ppo (kl_coef=0.05) - sft (detectable: " in overview
    assert any(
        line == "dpo: no gold-vs-KL curve (one setting (beta=0.1): a curve needs at least two KL values)."
        for line in lines
    )


def test_summary_says_when_a_paired_difference_is_not_significant() -> None:
    from alignment.statistics import analyse
    from tests.unit.test_statistics import SFT_GOLD, _result, _scores

    flipped = SFT_GOLD[1:] + SFT_GOLD[:1]  # prompt 4 lost, prompt 19 won: the same mean
    better = flipped[:10] + [1.0] + flipped[11:]  # and prompt 10 won: 2 wins, 1 loss, p = 1
    scores = {1: _scores(SFT_GOLD)}
    reference, results = _comparison((scores, [_result("dpo", "dpo", {"beta": 0.1}, 1, _scores(better))]))
    analysis = analyse(reference["scores"], results, replicates=1000)
    lines = summary_lines(aggregate(reference, results), analysis)
    assert "paired difference +0.050" in lines[0] and "not significant; at this n a difference of" in lines[0]
    assert "so this comparison does not show a gain over SFT" in lines[0]
    same = [_result("dpo", "dpo", {"beta": 0.1}, 1, _scores(SFT_GOLD))]
    reference, same = _comparison((scores, same))
    lines = summary_lines(aggregate(reference, same), analyse(reference["scores"], same, replicates=200))
    assert "the difference is the same on every prompt, so no detectable effect is estimable" in lines[0]
    assert "not significant: dpo (beta=0.1) - sft (no variation over prompts)" in lines[1]


def test_report_records_paired_tables_fits_scores_and_how_to_reproduce(tmp_path: Path) -> None:
    from alignment.report import write
    from tests.unit.test_statistics import PROMPTS, crafted_curves

    reference, results = _comparison(crafted_curves())
    config = {
        "name": "crafted",
        "pipeline": "configs/pipelines/smoke.yaml",
        "seeds": [1, 2],
        "evaluation": {
            "prompts": {"source": "builtin:tasks", "split": "test", "seed": 1234},
            "decoding": {"samples_per_prompt": 1, "temperature": 1.0, "max_new_tokens": 8},
            "rm": "reward",
            "gold": "rule:tasks",
        },
    }
    provenance = {
        "command": "alignment compare configs/compare/crafted.yaml seeds=[1,2]",
        "code_version": "0.1.0+abc1234",
        "uncommitted_changes": False,
        "compare_config_hash": "0123456789abcdef",
        "seeds": [1, 2],
        "evaluation_engine": {"backend": "hf", "dtype": "float32", "device": "cpu"},
        "artifacts": [
            {
                "path": "runs/crafted/base/sft",
                "stage": "sft",
                "config_hash": "feedfacecafebeef",
                "code_version": "0.1.0+abc1234",
                "precision": {"model_dtype": "auto", "trained_weights": "float32"},
            }
        ],
    }
    prompts = [{"index": i, "id": f"tasks-test-1234-{i}"} for i in range(PROMPTS)]
    write(
        tmp_path,
        config=config,
        group="crafted-1234",
        reference=reference,
        results=results,
        tracking=("disabled", "alignment"),
        provenance=provenance,
        prompts=prompts,
    )
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Paired comparisons", "## Gold at equal KL", "## Over-optimisation (Gao et al. 2022)"):
        assert heading in report
    assert "| best-of-n (n=2) - sft | 1, 2 | 40 |" in report  # the paired table: seeds and prompts
    assert "| ppo | rl | 1.000, 0.000 | 0.500, 0.100 |" in report  # the fitted parameters
    assert "| best-of-n | best_of_n | " in report and "within the KL range measured" in report
    reproduce = report.split("## Reproduce")[1]
    for text in (
        "`alignment compare configs/compare/crafted.yaml seeds=[1,2]`",
        "`0.1.0+abc1234`",
        "`0123456789abcdef`",
        "Seeds: [1, 2]",
        "hf, float32, on cpu",
        "| `runs/crafted/base/sft` | sft | `feedfacecafebeef` |",
    ):
        assert text in reproduce
    assert "uncommitted" not in reproduce
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["provenance"] == provenance and data["prompts"] == prompts
    assert data["reference_scores"]["1"]["gold"] == reference["scores"][1]["gold"]
    assert all(r["scores"]["prompt_index"] == list(range(PROMPTS)) for r in data["results"])
    assert {c["name"] for c in data["analysis"]["comparisons"]} >= {"ppo (kl_coef=0.2) - sft"}
    rows = {(r["arm"], r["setting"]): r for r in data["rows"]}
    assert (
        rows[("ppo", "kl_coef=0.2")]["vs_sft"]["p_holm"] >= rows[("ppo", "kl_coef=0.2")]["vs_sft"]["p_value"]
    )
    with Image.open(tmp_path / "overoptimisation.png") as image:
        image.load()
        series = json.loads(image.text["series"])
    assert set(series) == {"proxy", "gold", "fits"} and set(series["fits"]) == {"best-of-n", "ppo"}
    assert series["fits"]["best-of-n"]["gold_peak"]["kl"] == pytest.approx((0.8 / 0.6) ** 2)
    curve = series["fits"]["ppo"]["curve"]
    assert len(curve["kl"]) == len(curve["gold"]) == len(curve["proxy"]) and curve["kl"][0] == 0.0
    assert curve["gold"][0] == pytest.approx(0.3)  # every fitted curve starts at the SFT policy
