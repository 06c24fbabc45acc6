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
