"""alignment.statistics against hand-computed values: the paired bootstrap on crafted tables, McNemar and the sign
test on small counts, Holm on a list of p-values, the minimum detectable effect, Gao et al.'s fits recovering known
parameters, and the analysis of a crafted comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment.statistics import (
    analyse,
    binomial_two_sided,
    fit_gao,
    gao_curve,
    gao_peak,
    holm,
    mcnemar,
    minimum_detectable_effect,
    paired_bootstrap,
    resampled_means,
    sign_test,
)


# ------------------------------------------------------------------------------------------------ bootstrap
def test_a_replicate_is_every_drawn_seed_over_every_drawn_prompt() -> None:
    table = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (seeds, prompts)
    seed_counts = np.array([[2.0, 0.0], [1.0, 1.0]])
    prompt_counts = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    # seed 0 twice over prompts 1, 2, 2: (2 + 3 + 3) / 3; both seeds over prompt 0 three times: (1 + 4) / 2
    assert resampled_means(table, seed_counts, prompt_counts) == pytest.approx([8 / 3, 2.5])


def test_paired_bootstrap_of_two_prompts() -> None:
    """Differences 0 and 1: a resample of two prompts has mean 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so
    the 95% interval is [0, 1], the standard error sqrt(1/8) and P(mean <= 0) = 1/4 (two-sided p = 1/2)."""
    result = paired_bootstrap([0.0, 1.0], replicates=8000, seed=3)
    assert result["mean"] == 0.5
    assert (result["ci_low"], result["ci_high"]) == (0.0, 1.0)
    assert result["standard_error"] == pytest.approx(math.sqrt(1 / 8), abs=0.01)
    assert result["p_value"] == pytest.approx(0.5, abs=0.03)
    assert result["resampled"] == "prompts" and (result["seeds"], result["prompts"]) == (1, 2)


def test_the_second_level_resamples_the_seeds() -> None:
    """Seed 1 differs from the SFT policy by 0 on every prompt, seed 2 by 1: redrawing prompts alone sees no
    variation (every replicate is 1/2); redrawing the seeds too gives 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4."""
    table = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    prompts_only = paired_bootstrap(table, resample_seeds=False, replicates=2000)
    assert (prompts_only["ci_low"], prompts_only["ci_high"]) == (0.5, 0.5)
    assert prompts_only["standard_error"] == 0.0
    assert prompts_only["p_value"] == pytest.approx(2 / 2001)  # no replicate at or below 0
    both = paired_bootstrap(table, replicates=8000, seed=5)
    assert both["mean"] == 0.5 and (both["ci_low"], both["ci_high"]) == (0.0, 1.0)
    assert both["standard_error"] == pytest.approx(math.sqrt(1 / 8), abs=0.01)
    assert both["resampled"] == "seeds and prompts"


def test_identical_policies_are_no_evidence() -> None:
    result = paired_bootstrap(np.zeros((2, 5)), replicates=500)
    assert result["mean"] == 0.0 and result["p_value"] == 1.0
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        paired_bootstrap([1.0])


# ----------------------------------------------------------------------------------------------- exact tests
def test_exact_binomial_tails_by_hand() -> None:
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(9, 10) == pytest.approx(2 * (1 + 10) / 1024)
    assert binomial_two_sided(1, 10) == binomial_two_sided(9, 10)
    assert binomial_two_sided(5, 10) == 1.0  # 2 * 638/1024 capped
    assert binomial_two_sided(0, 0) == 1.0


def test_mcnemar_on_a_two_by_two_table() -> None:
    """30 prompts both right, 9 only A right, 1 only B right, 10 both wrong: only the 10 discordant pairs count,
    p = 2 * P(X <= 1 | Binomial(10, 1/2)) = 2 * 11 / 1024."""
    result = mcnemar([[30, 9], [1, 10]])
    assert (result["only_a"], result["only_b"]) == (9, 1)
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar([[5, 0], [0, 5]])["p_value"] == 1.0  # no discordant pair: no evidence


def test_sign_test_drops_zeros() -> None:
    result = sign_test([0.5, 0.25, 1.0, 0.0, -0.5, 0.0, 1.0])
    assert (result["positive"], result["negative"], result["zero"]) == (4, 1, 2)
    assert result["p_value"] == pytest.approx(2 * (1 + 5) / 32)


def test_holm_on_a_list_of_p_values() -> None:
    """Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_minimum_detectable_effect() -> None:
    # z_0.975 = 1.959964, z_0.8 = 0.841621
    assert minimum_detectable_effect(0.1) == pytest.approx(0.2801585, abs=1e-6)
    assert minimum_detectable_effect(0.1, alpha=0.01, power=0.9) == pytest.approx(
        (2.5758293 + 1.2815516) * 0.1, abs=1e-6
    )


# ------------------------------------------------------------------------------------------ Gao et al. (2022)
D = np.linspace(0.2, 3.0, 12)


@pytest.mark.parametrize(
    ("form", "a", "b", "peak"), [("best_of_n", 0.8, 0.3, 0.8 / 0.6), ("rl", 0.5, 0.25, math.e)]
)
def test_gao_fits_recover_known_parameters(form: str, a: float, b: float, peak: float) -> None:
    gains = gao_curve(D, a, b, form)
    assert fit_gao(D, gains, form) == pytest.approx((a, b), abs=1e-9)
    noisy = gains + np.random.default_rng(0).normal(0.0, 0.01, D.size)
    assert fit_gao(D, noisy, form) == pytest.approx((a, b), abs=0.03)
    assert gao_peak(a, b, form) == pytest.approx(peak)
    # batched: one fit per replicate, with weights (a seed drawn twice counts twice, one not drawn not at all)
    weights = np.stack([np.ones(D.size), np.r_[np.zeros(6), 2 * np.ones(6)]])
    many_a, many_b = fit_gao(D, np.stack([gains, gains]), form, weights)
    assert many_a == pytest.approx([a, a]) and many_b == pytest.approx([b, b])


def test_gao_forms_by_hand() -> None:
    assert gao_curve(2.0, 1.0, 0.25, "best_of_n") == pytest.approx(2 * (1 - 0.5))
    assert gao_curve(math.e, 1.0, 0.25, "rl") == pytest.approx(math.e * (1 - 0.25))
    assert gao_curve(0.0, 1.0, 0.25, "rl") == 0.0  # d log d -> 0
    assert math.isnan(gao_peak(0.5, -0.1, "rl")) and math.isnan(gao_peak(-0.5, 0.1, "best_of_n"))
    a, b = fit_gao([1.0, 1.0, 1.0], [0.2, 0.3, 0.4], "rl")  # one KL value: two terms, one point
    assert math.isnan(a) and math.isnan(b)
    with pytest.raises(ValueError, match="unknown Gao form"):
        gao_curve(1.0, 1.0, 1.0, "dpo")


# ------------------------------------------------------------------------------------- a crafted comparison
def _scores(gold: list[float], rm: list[float] | None = None, kl: list[float] | None = None) -> dict:
    return {
        "prompt_index": list(range(len(gold))),
        "sample": [0] * len(gold),
        "gold": gold,
        "rm": rm,
        "kl": kl,
    }


def _result(arm: str, stage: str, setting: dict, seed: int, scores: dict, kl: float | None = None) -> dict:
    return {
        "arm": arm,
        "stage": stage,
        "setting": setting,
        "seed": seed,
        "metrics": {"kl": {"mean": kl}} if kl is not None else {},
        "scores": scores,
    }


SFT_GOLD = [1.0] * 5 + [0.0] * 15
DPO_GOLD = [1.0] * 14 + [0.0] * 6  # right where SFT is, and on 9 more prompts
PPO_GOLD = [0.0] * 2 + [1.0] * 6 + [0.0] * 12  # loses 2 of SFT's prompts, wins 3 others


def crafted_binary() -> tuple[dict, list[dict]]:
    reference = {1: _scores(SFT_GOLD)}
    results = [
        _result("dpo", "dpo", {"beta": 0.1}, 1, _scores(DPO_GOLD)),
        _result("ppo", "ppo", {"kl_coef": 0.05}, 1, _scores(PPO_GOLD)),
    ]
    return reference, results


def test_binary_gold_is_compared_by_mcnemar_and_holm_corrected() -> None:
    """dpo - sft: 9 discordant pairs, all for dpo: p = 2/2^9. ppo - sft: 3 for ppo, 2 for sft: p = 1.
    ppo - dpo (the best): 8 for dpo, none for ppo: p = 2/2^8. Holm over the three: sorted 2/512 * 3,
    2/256 * 2, 1 * 1."""
    reference, results = crafted_binary()
    analysis = analyse(reference, results, replicates=2000)
    assert analysis is not None and analysis["binary_gold"]
    dpo, ppo, versus = analysis["comparisons"]
    assert [c["name"] for c in analysis["comparisons"]] == [
        "dpo (beta=0.1) - sft",
        "ppo (kl_coef=0.05) - sft",
        "ppo (kl_coef=0.05) - dpo (beta=0.1)",
    ]
    assert [c["kind"] for c in (dpo, ppo, versus)] == ["vs_sft", "vs_sft", "vs_best"]
    assert all(c["test"] == "McNemar exact" for c in (dpo, ppo, versus))
    assert (dpo["mean"], ppo["mean"], versus["mean"]) == pytest.approx((9 / 20, 1 / 20, -8 / 20))
    assert dpo["p_value"] == pytest.approx(mcnemar([[5, 9], [0, 6]])["p_value"]) == pytest.approx(2 / 512)
    assert ppo["p_value"] == 1.0 and (ppo["prompts_better"], ppo["prompts_worse"]) == (3, 2)
    assert versus["p_value"] == pytest.approx(2 / 256)
    assert [c["p_holm"] for c in (dpo, ppo, versus)] == pytest.approx([6 / 512, 1.0, 4 / 256])
    assert [c["significant"] for c in (dpo, ppo, versus)] == [True, False, True]
    assert dpo["ci_low"] > 0 and versus["ci_high"] < 0
    assert ppo["minimum_detectable_effect"] == pytest.approx(
        minimum_detectable_effect(ppo["standard_error"], 0.05 / 3)
    )
    assert analysis["equal_kl"] is None and set(analysis["skipped"]) == {"dpo", "ppo"}  # one setting each


def test_a_policy_that_ties_everywhere_has_no_detectable_effect() -> None:
    reference, _ = crafted_binary()
    analysis = analyse(
        reference, [_result("dpo", "dpo", {"beta": 0.1}, 1, _scores(SFT_GOLD))], replicates=200
    )
    (same,) = analysis["comparisons"]
    assert same["mean"] == 0.0 and same["p_value"] == 1.0 and same["standard_error"] == 0.0
    assert not same["significant"] and math.isnan(same["minimum_detectable_effect"])


def test_no_gold_no_analysis() -> None:
    reference = {1: {**_scores([0.0, 1.0]), "gold": None}}
    assert analyse(reference, [_result("dpo", "dpo", {}, 1, _scores([1.0, 1.0]))]) is None


PROMPTS = 40
NOISE = np.where(np.arange(PROMPTS) % 2 == 0, 0.1, -0.1)  # mean 0 over the prompts: the fits see the curve
BON = {"a": 0.8, "b": 0.3}
RL = {"a": 0.5, "b": 0.1}


def crafted_curves() -> tuple[dict, list[dict]]:
    """Best-of-n at n = 2, 4, 8, 16 and PPO at three KL values, two seeds each; gold and proxy gains over the SFT
    policy follow Gao's forms exactly on average over the prompts."""
    sft = 0.3 + NOISE
    reference = {seed: _scores(list(sft), list(np.zeros(PROMPTS))) for seed in (1, 2)}
    results = []
    for n in (2, 4, 8, 16):
        kl = math.log(n) - (n - 1) / n
        d = math.sqrt(kl)
        gold = sft + gao_curve(d, BON["a"], BON["b"], "best_of_n") + NOISE
        proxy = np.full(PROMPTS, gao_curve(d, 1.0, 0.0, "best_of_n"))
        for seed in (1, 2):
            results.append(
                _result("best-of-n", "best_of_n", {"n": n}, seed, _scores(list(gold), list(proxy)), kl=kl)
            )
    for coefficient, kl in ((0.2, 0.5), (0.1, 2.0), (0.05, 6.0)):
        d = math.sqrt(kl)
        gold = sft + gao_curve(d, RL["a"], RL["b"], "rl") - NOISE
        proxy = np.full(PROMPTS, gao_curve(d, 1.0, 0.0, "rl"))
        for seed in (1, 2):
            scores = _scores(list(gold), list(proxy), [kl] * PROMPTS)
            results.append(_result("ppo", "ppo", {"kl_coef": coefficient}, seed, scores))
    return reference, results


def test_equal_kl_and_overoptimisation_from_crafted_curves() -> None:
    reference, results = crafted_curves()
    analysis = analyse(reference, results, replicates=1000)
    assert analysis is not None and not analysis["binary_gold"]
    bon, ppo = analysis["fits"]["best-of-n"], analysis["fits"]["ppo"]
    assert (bon["form"], ppo["form"]) == ("best_of_n", "rl")
    assert (bon["gold"]["a"], bon["gold"]["b"]) == pytest.approx((BON["a"], BON["b"]), abs=1e-9)
    assert (ppo["gold"]["a"], ppo["gold"]["b"]) == pytest.approx((RL["a"], RL["b"]), abs=1e-9)
    assert (ppo["proxy"]["a"], ppo["proxy"]["b"]) == pytest.approx((1.0, 0.0), abs=1e-9)
    # best-of-n's gold peaks at d* = a / 2b = 4/3, KL 16/9, inside the range (n = 16: KL 1.84) and the proxy rises
    peak = bon["gold_peak"]
    assert peak["kl"] == pytest.approx((0.8 / 0.6) ** 2) and peak["inside"] and peak["proxy_still_rising"]
    assert peak["gold"] == pytest.approx(0.3 + 0.8**2 / (4 * 0.3))
    assert peak["ci_low"] <= peak["kl"] <= peak["ci_high"]
    # PPO's RL form peaks at d* = exp(a/b - 1) = e^4: KL e^8, far beyond the 6.0 measured
    assert ppo["gold_peak"]["kl"] == pytest.approx(math.exp(8)) and not ppo["gold_peak"]["inside"]
    equal = analysis["equal_kl"]
    top = math.log(16) - 15 / 16  # the largest KL best-of-n reached: the common range ends there
    assert equal["kl_max_common"] == pytest.approx(top)
    assert [v["kl"] for v in equal["values"]] == pytest.approx([top / 4, top / 2, 3 * top / 4, top])
    last = equal["values"][-1]
    d = math.sqrt(top)
    expected = {
        "best-of-n": 0.3 + gao_curve(d, BON["a"], BON["b"], "best_of_n"),
        "ppo": 0.3 + gao_curve(d, RL["a"], RL["b"], "rl"),
    }
    for arm, value in expected.items():
        assert last["gold"][arm]["mean"] == pytest.approx(value)
        assert last["gold"][arm]["ci_low"] <= value <= last["gold"][arm]["ci_high"]
    assert expected["ppo"] - expected["best-of-n"] == pytest.approx(0.103, abs=1e-3)  # 0.636 vs 0.533
    assert last["leader"] == "ppo" and last["ahead"]
    assert last["leader_vs"]["best-of-n"]["difference"] == pytest.approx(
        expected["ppo"] - expected["best-of-n"]
    )
    assert equal["values"][0]["leader"] == "best-of-n"  # at a quarter of that KL best-of-n's curve is higher
    assert len(bon["curve"]["kl"]) == len(bon["curve"]["gold"]) == len(bon["curve"]["proxy"])
