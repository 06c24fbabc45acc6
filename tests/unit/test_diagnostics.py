"""Reward-model diagnostics on crafted scores whose answers are known by hand."""

from __future__ import annotations

import math

import pytest

from reward_models.diagnostics import diagnose, pearson, spearman, to_markdown, wilson_interval


def test_wilson_interval_matches_hand_computation() -> None:
    # p = 0.8, n = 100: centre = (0.8 + z^2/200) / (1 + z^2/100), half = z*sqrt(0.0016 + z^2/40000) / (1 + z^2/100)
    z = 1.959963984540054
    d = 1 + z * z / 100
    centre = (0.8 + z * z / 200) / d
    half = z * math.sqrt(0.8 * 0.2 / 100 + z * z / 40000) / d
    lo, hi = wilson_interval(80, 100)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert lo == pytest.approx(0.7112, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_ties_and_by_source() -> None:
    chosen = [1.0, 2.0, 0.0, 5.0]
    rejected = [0.0, 3.0, 0.0, 1.0]  # right, wrong, tie, right
    report = diagnose(chosen, rejected, sources=["a", "a", "b", "b"])
    assert report.accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert report.tie_fraction == pytest.approx(0.25)
    assert report.by_source["a"]["accuracy"] == pytest.approx(0.5)
    assert report.by_source["b"]["accuracy"] == pytest.approx(0.75)
    assert report.mean_margin == pytest.approx((1 - 1 + 0 + 4) / 4)


def test_length_scorer_shows_correlation_near_one() -> None:
    chosen_lengths = [10, 50, 30, 80, 5, 60]
    rejected_lengths = [40, 20, 70, 10, 90, 15]
    # a scorer that only prefers longer responses
    report = diagnose(
        [float(x) for x in chosen_lengths],
        [float(x) for x in rejected_lengths],
        chosen_lengths,
        rejected_lengths,
    )
    assert report.length_spearman == pytest.approx(1.0)
    assert report.length_pearson == pytest.approx(1.0)
    assert report.prefers_longer == pytest.approx(1.0)
    assert report.chosen_is_longer == pytest.approx(3 / 6)
    assert any("correlates with length" in w for w in report.warnings)


def test_calibration_buckets_and_chance_warning() -> None:
    # confident pairs right, unconfident pairs wrong: well calibrated, accuracy 0.5 -> not above chance
    chosen = [0.01, -0.02, 0.015, -0.01, 5.0, 6.0, 4.0, 7.0]
    rejected = [0.02, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0]
    report = diagnose(chosen, rejected, n_buckets=2)
    assert [row["n"] for row in report.calibration] == [4, 4]
    assert report.calibration[0]["accuracy"] == 0.0 and report.calibration[1]["accuracy"] == 1.0
    assert not report.above_chance()
    assert any("not above chance" in w for w in report.warnings)
    text = to_markdown(report)
    assert "NOT above chance" in text and "| margin bucket |" in text


def test_rank_correlation_handles_ties_and_errors() -> None:
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="2 chosen scores but 1 rejected"):
        diagnose([1.0, 2.0], [1.0])
    assert diagnose([1.0], [0.0]).to_dict()["length_pearson"] is None
