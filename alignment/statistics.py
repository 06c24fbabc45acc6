"""Paired statistics of a comparison (`alignment compare`): every policy answers the same held-out prompts with the
same sampling seeds, so two policies are compared prompt by prompt, never by their two means alone.

- `paired_bootstrap`: the mean per-prompt difference of two policies (each prompt's samples averaged first), with
  a 95% percentile interval, a standard error and a two-sided p-value from resampling prompts, and training seeds
  with them (two levels: Owen 2007's pigeonhole bootstrap for crossed factors, since every seed answers every
  prompt);
- `sign_test` / `mcnemar`: exact tests for a binary gold reward (McNemar's exact test is the sign test of the
  discordant pairs);
- `holm`: Holm's step-down adjustment of the p-values of every comparison a report makes;
- `minimum_detectable_effect`: the difference a comparison would detect with 80% power at its n;
- Gao et al. (2022)'s functional forms of reward against d = sqrt(KL): best-of-n R(d) = d (a - b d), RL
  R(d) = d (a - b log d); `fit_gao` and `gao_peak` (where the gold reward peaks: the over-optimisation point);
- `analyse`: all of the above over one comparison's per-prompt scores (what alignment.report writes).

Written here rather than taken from scipy, which is not a dependency: the exact binomial tail (a sum of binomial
terms, `math.comb`), the two-level bootstrap (scipy.stats.bootstrap resamples one level), and the Gao fits (both
forms are linear in a and b, so weighted least squares has a closed form that curve_fit would only iterate to).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

ALPHA = 0.05
POWER = 0.8
REPLICATES = 4000
GAO_FORMS = ("best_of_n", "rl")
RL_STAGES = ("ppo", "grpo", "rloo")
BEST_OF_N = "best_of_n"


# ------------------------------------------------------------------------------------------------ bootstrap
def bootstrap_weights(
    rng: np.random.Generator, seeds: int, prompts: int, replicates: int, resample_seeds: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed and each prompt is drawn in each replicate: (replicates, seeds), (replicates, prompts).
    Counts of a multinomial draw are resampling with replacement; without `resample_seeds` every seed counts once."""
    prompt_counts = rng.multinomial(prompts, np.full(prompts, 1.0 / prompts), size=replicates)
    if resample_seeds:
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=replicates)
    else:
        seed_counts = np.ones((replicates, seeds), dtype=np.int64)
    return seed_counts.astype(float), prompt_counts.astype(float)


def resampled_means(table: np.ndarray, seed_counts: np.ndarray, prompt_counts: np.ndarray) -> np.ndarray:
    """The mean of a (seeds, prompts) table in each replicate: every drawn seed over every drawn prompt."""
    total = np.einsum("bs,sp,bp->b", seed_counts, table, prompt_counts)
    return total / (seed_counts.sum(axis=1) * prompt_counts.sum(axis=1))


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference: twice the smaller share on
    either side of 0 (ties on both sides), with the +1 correction so that it is never 0."""
    count = len(replicates)
    below = int(np.sum(replicates <= 0))
    above = int(np.sum(replicates >= 0))
    return min(1.0, 2 * (min(below, above) + 1) / (count + 1))


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap(
    differences: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    *,
    replicates: int = REPLICATES,
    resample_seeds: bool = True,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean of a (seeds, prompts) table of paired differences (one row: one seed) with its bootstrap interval,
    standard error and two-sided p-value. Prompts are resampled, and seeds with them (`resample_seeds`): one draw
    of seeds and one of prompts per replicate, every drawn seed over every drawn prompt, since the prompts are the
    same for every seed (crossed, not nested)."""
    table = np.atleast_2d(np.asarray(differences, dtype=float))
    seeds, prompts = table.shape
    if prompts < 2:
        raise ValueError("a paired bootstrap needs at least 2 prompts")
    rng = np.random.default_rng(seed)
    draws = resampled_means(table, *bootstrap_weights(rng, seeds, prompts, replicates, resample_seeds))
    low, high = percentile_interval(draws, level)
    return {
        "mean": float(table.mean()),
        "ci_low": low,
        "ci_high": high,
        "standard_error": float(draws.std(ddof=1)),
        "p_value": bootstrap_p_value(draws),
        "replicates": replicates,
        "seeds": seeds,
        "prompts": prompts,
        "resampled": "seeds and prompts" if resample_seeds and seeds > 1 else "prompts",
    }


# ----------------------------------------------------------------------------------------------- exact tests
def binomial_two_sided(successes: int, trials: int) -> float:
    """Exact two-sided p-value of `successes` in `trials` under probability 1/2: twice the smaller tail (the
    distribution is symmetric, so this is also scipy.stats.binomtest's value)."""
    if trials == 0:
        return 1.0
    low = min(successes, trials - successes)
    tail = sum(math.comb(trials, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2**trials)


def sign_test(differences: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Exact sign test of paired differences (one per prompt): zeros are dropped, the rest are positive with
    probability 1/2 under "no difference"."""
    values = np.asarray(differences, dtype=float)
    positive, negative = int(np.sum(values > 0)), int(np.sum(values < 0))
    return {
        "positive": positive,
        "negative": negative,
        "zero": int(values.size - positive - negative),
        "p_value": binomial_two_sided(positive, positive + negative),
    }


def mcnemar(table: Sequence[Sequence[int]]) -> dict[str, Any]:
    """McNemar's exact test of a 2x2 table of paired binary outcomes [[both 1, only A 1], [only B 1, both 0]]:
    only the discordant pairs count, and under "no difference" each falls either way with probability 1/2."""
    (_, only_a), (only_b, _) = table
    return {"only_a": only_a, "only_b": only_b, "p_value": binomial_two_sided(only_a, only_a + only_b)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest is multiplied by (m - i + 1),
    made non-decreasing, capped at 1. Rejecting where adjusted p < alpha bounds the family-wise error by alpha."""
    count = len(p_values)
    order = sorted(range(count), key=lambda i: p_values[i])
    adjusted = [0.0] * count
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def minimum_detectable_effect(standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true difference a two-sided test at level `alpha` detects with probability `power`, given the standard
    error of the estimate (normal approximation): (z_{1-alpha/2} + z_{power}) * SE."""
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * standard_error


# ------------------------------------------------------------------------------------------ Gao et al. (2022)
def _gao_terms(d: np.ndarray, form: str) -> np.ndarray:
    """The term b multiplies (with a minus sign): d^2 for best-of-n, d log d (0 at d = 0) for RL."""
    if form == "best_of_n":
        return d * d
    if form == "rl":
        return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    raise ValueError(f"unknown Gao form {form!r}; one of {GAO_FORMS}")


def gao_curve(d: Any, a: Any, b: Any, form: str) -> Any:
    """Gao et al. (2022), eq. 1-2: best-of-n R(d) = d (a - b d); RL R(d) = d (a - b log d); d = sqrt(KL).
    Broadcasts (numpy rules) over d, a and b."""
    d = np.asarray(d, dtype=float)
    return np.asarray(a) * d - np.asarray(b) * _gao_terms(d, form)


def fit_gao(d: Any, gains: Any, form: str, weights: Any = None) -> tuple[Any, Any]:
    """(a, b) of Gao's `form` by weighted least squares on reward gains over the initial policy (R(0) = 0).
    `gains` and `weights` may carry a leading replicate axis (B, N): one fit per replicate. NaN where fewer than
    two distinct d carry weight (the two terms are then proportional)."""
    d = np.asarray(d, dtype=float)
    y = np.asarray(gains, dtype=float)
    w = np.ones_like(y) if weights is None else np.broadcast_to(np.asarray(weights, dtype=float), y.shape)
    u, v = d, -_gao_terms(d, form)  # R = a u + b v
    suu, svv, suv = (w * u * u).sum(-1), (w * v * v).sum(-1), (w * u * v).sum(-1)
    suy, svy = (w * u * y).sum(-1), (w * v * y).sum(-1)
    determinant = suu * svv - suv * suv
    scale = np.maximum(suu * svv, 1e-300)
    degenerate = np.abs(determinant) <= 1e-10 * scale
    safe = np.where(degenerate, 1.0, determinant)
    a = np.where(degenerate, np.nan, (svv * suy - suv * svy) / safe)
    b = np.where(degenerate, np.nan, (suu * svy - suv * suy) / safe)
    return (float(a), float(b)) if np.ndim(a) == 0 else (a, b)


def gao_peak(a: Any, b: Any, form: str) -> Any:
    """The d where R(d) peaks (NaN where it has none): best-of-n a / (2b) for a, b > 0; RL exp(a/b - 1) for b > 0
    (R'(d) = a - b (log d + 1)). Past it, more KL lowers the reward: for the gold reward, over-optimisation."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if form == "best_of_n":
            peak = np.where((a > 0) & (b > 0), a / (2 * b), np.nan)
        elif form == "rl":
            peak = np.where(b > 0, np.exp(a / np.where(b > 0, b, 1.0) - 1), np.nan)
        else:
            raise ValueError(f"unknown Gao form {form!r}; one of {GAO_FORMS}")
    return float(peak) if peak.ndim == 0 else peak


# ------------------------------------------------------------------------------------------ one comparison
def per_prompt_means(scores: Mapping[str, Any], key: str, prompts: int) -> np.ndarray | None:
    """The mean of column `key` over each prompt's samples (None when the column was not recorded)."""
    values = scores.get(key)
    if values is None or any(v is None for v in values):
        return None
    index = np.asarray(scores["prompt_index"], dtype=int)
    counts = np.bincount(index, minlength=prompts)
    if np.any(counts == 0):
        raise ValueError("some prompts have no sample in these scores")
    return np.bincount(index, weights=np.asarray(values, dtype=float), minlength=prompts) / counts


def _label(setting: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "default"


def _is_binary(columns: list[Any]) -> bool:
    """Whether every gold score is 0 or 1 (a checker's verdict)."""
    return all(c is not None and np.all(np.isin(np.asarray(c, dtype=float), (0.0, 1.0))) for c in columns)


class _Policy:
    """One evaluated policy (arm, setting, seed): per-prompt gold, proxy and KL."""

    def __init__(self, result: Mapping[str, Any], prompts: int) -> None:
        scores = result["scores"]
        self.arm, self.stage, self.seed = result["arm"], result["stage"], result["seed"]
        self.setting = _label(result["setting"])
        self.raw_gold = scores.get("gold")
        self.gold = per_prompt_means(scores, "gold", prompts)
        self.rm = per_prompt_means(scores, "rm", prompts)
        self.kl = per_prompt_means(scores, "kl", prompts)
        kl_metric = (result.get("metrics") or {}).get("kl") or {}
        self.kl_constant = kl_metric.get("mean")  # best-of-n's analytic KL: no per-sample value


def _difference(
    name: str,
    kind: str,
    policy: tuple[str, str],
    other: tuple[str, str],
    tables: tuple[dict[int, np.ndarray], dict[int, np.ndarray]],
    raw: tuple[dict[int, Any], dict[int, Any]],
    binary: bool,
    replicates: int,
) -> dict[str, Any] | None:
    seeds = sorted(set(tables[0]) & set(tables[1]))
    if not seeds:
        return None
    differences = np.stack([tables[0][s] - tables[1][s] for s in seeds])  # (seeds, prompts)
    result = paired_bootstrap(differences, replicates=replicates)
    if binary:
        one_pair = all(len(raw[0][s]) == differences.shape[1] for s in seeds) and len(seeds) == 1
        test = sign_test(differences.mean(axis=0))
        result |= {
            "test": "McNemar exact" if one_pair else "exact sign test over prompts",
            "p_value": test["p_value"],
            "prompts_better": test["positive"],
            "prompts_worse": test["negative"],
            "prompts_tied": test["zero"],
        }
    else:
        result["test"] = "paired bootstrap"
    return {
        "name": name,
        "kind": kind,
        "policy": {"arm": policy[0], "setting": policy[1]},
        "other": {"arm": other[0], "setting": other[1]},
        "seed_values": seeds,
        **result,
    }


def compare_policies(
    reference: Mapping[int, Mapping[str, Any]],
    policies: list[_Policy],
    replicates: int = REPLICATES,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """The comparisons a report makes, on the gold reward: every arm and setting against the SFT policy, and each
    other arm's best setting against the best one; Holm-adjusted together. Significant: Holm-adjusted p < alpha
    and the 95% interval (over prompts and seeds) excludes 0; otherwise the minimum detectable effect at
    Holm's strictest level alpha / m is given."""
    prompts = len(next(iter(policies)).gold)
    sft = {seed: per_prompt_means(scores, "gold", prompts) for seed, scores in reference.items()}
    sft_raw = {seed: scores["gold"] for seed, scores in reference.items()}
    groups: dict[tuple[str, str], list[_Policy]] = defaultdict(list)
    for policy in policies:
        groups[(policy.arm, policy.setting)].append(policy)
    gold = {key: {p.seed: p.gold for p in members} for key, members in groups.items()}
    raw = {key: {p.seed: p.raw_gold for p in members} for key, members in groups.items()}
    binary = _is_binary([*sft_raw.values(), *(p.raw_gold for p in policies)])
    comparisons = []
    for key in groups:
        name = f"{key[0]} ({key[1]}) - sft"
        item = _difference(
            name, "vs_sft", key, ("sft", "-"), (gold[key], sft), (raw[key], sft_raw), binary, replicates
        )
        if item:
            comparisons.append(item)
    mean_gold = {key: float(np.mean([t for t in gold[key].values()])) for key in groups}
    best = max(groups, key=lambda k: mean_gold[k])
    arms = dict.fromkeys(key[0] for key in groups)
    for arm in arms:
        if arm == best[0]:
            continue
        top = max((k for k in groups if k[0] == arm), key=lambda k: mean_gold[k])
        name = f"{top[0]} ({top[1]}) - {best[0]} ({best[1]})"
        item = _difference(
            name, "vs_best", top, best, (gold[top], gold[best]), (raw[top], raw[best]), binary, replicates
        )
        if item:
            comparisons.append(item)
    adjusted = holm([c["p_value"] for c in comparisons])
    count = len(comparisons)
    for item, p_holm in zip(comparisons, adjusted, strict=True):
        excludes_zero = item["ci_low"] > 0 or item["ci_high"] < 0
        item["p_holm"] = p_holm
        item["significant"] = bool(p_holm < alpha and excludes_zero)
        # NaN where every prompt ties: no variation to scale a detectable effect by
        standard_error = item["standard_error"]
        item["minimum_detectable_effect"] = (
            minimum_detectable_effect(standard_error, alpha / count) if standard_error > 0 else math.nan
        )
    return comparisons


def _fit_form(stage: str) -> str:
    return "best_of_n" if stage == BEST_OF_N else "rl"


def curve_fits(
    reference: Mapping[int, Mapping[str, Any]],
    policies: list[_Policy],
    replicates: int = REPLICATES,
    grid_points: int = 4,
    seed: int = 1,
) -> dict[str, Any]:
    """Each arm's gold (and proxy) gain over the SFT policy against d = sqrt(KL), fitted with Gao's form for it
    (best-of-n's for best-of-n, the RL form for every trained arm), over its settings and seeds; the gold of each
    arm at common KL values (up to the largest KL every fitted arm reached) with paired bootstrap intervals, and
    which arm is ahead at each; where each fitted gold curve peaks. The bootstrap redraws prompts and seeds for
    all arms at once, so the arms' curves stay paired."""
    prompts = len(policies[0].gold)
    seeds = sorted(reference)
    sft_gold = np.stack([per_prompt_means(reference[s], "gold", prompts) for s in seeds])
    sft_rm_rows = [per_prompt_means(reference[s], "rm", prompts) for s in seeds]
    sft_rm = None if any(r is None for r in sft_rm_rows) else np.stack(sft_rm_rows)
    rng = np.random.default_rng(seed)
    seed_counts, prompt_counts = bootstrap_weights(rng, len(seeds), prompts, replicates)
    prompt_share = prompt_counts / prompt_counts.sum(axis=1, keepdims=True)  # (B, P)
    sft_gold_mean = float(sft_gold.mean())
    sft_gold_draws = resampled_means(sft_gold, seed_counts, prompt_counts)
    by_arm: dict[str, list[_Policy]] = defaultdict(list)
    for policy in policies:
        if policy.seed in seeds:
            by_arm[policy.arm].append(policy)
    fits: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for arm, members in by_arm.items():
        settings = {p.setting for p in members}
        if len(settings) < 2:
            skipped[arm] = f"one setting ({next(iter(settings))}): a curve needs at least two KL values"
            continue
        if any(p.kl is None and p.kl_constant is None for p in members):
            skipped[arm] = "no KL measured"
            continue
        form = _fit_form(members[0].stage)
        row = np.array([seeds.index(p.seed) for p in members])
        weights = seed_counts[:, row]  # (B, N): a seed drawn twice counts twice
        kl = np.array([float(np.mean(p.kl)) if p.kl is not None else p.kl_constant for p in members])
        kl_draws = np.stack(
            [
                prompt_share @ p.kl if p.kl is not None else np.full(replicates, p.kl_constant)
                for p in members
            ],
            axis=1,
        )
        d, d_draws = np.sqrt(np.maximum(kl, 0.0)), np.sqrt(np.maximum(kl_draws, 0.0))
        entry: dict[str, Any] = {
            "form": form,
            "stage": members[0].stage,
            "points": [
                {"setting": p.setting, "seed": p.seed, "kl": float(k)}
                for p, k in zip(members, kl, strict=True)
            ],
            "kl_range": [float(kl.min()), float(kl.max())],
        }
        for name, own, base in (
            ("gold", [p.gold for p in members], sft_gold),
            ("proxy", [p.rm for p in members], sft_rm),
        ):
            if base is None or any(o is None for o in own):
                continue
            gains = np.stack([o - base[i] for o, i in zip(own, row, strict=True)])  # (N, P)
            a, b = fit_gao(d, gains.mean(axis=1), form)
            draws = fit_gao(d_draws, prompt_share @ gains.T, form, weights)  # (B,), (B,)
            entry[name] = {"a": a, "b": b, "level": float(base.mean())}
            entry[f"_{name}_draws"] = draws
        if "gold" not in entry:
            skipped[arm] = "no gold reward"
            continue
        entry["gold_peak"] = _peak(entry, form, float(kl.max()), sft_gold_mean)
        curve_kl = np.linspace(0.0, 1.15 * float(kl.max()), 60)
        entry["curve"] = {"kl": curve_kl.tolist()}
        for name in ("gold", "proxy"):
            if name in entry:
                fit = entry[name]
                entry["curve"][name] = (
                    fit["level"] + gao_curve(np.sqrt(curve_kl), fit["a"], fit["b"], form)
                ).tolist()
        fits[arm] = entry
    equal_kl = _equal_kl(fits, sft_gold_mean, sft_gold_draws, grid_points)
    for entry in fits.values():
        entry.pop("_gold_draws"), entry.pop("_proxy_draws", None)
    return {"fits": fits, "skipped": skipped, "equal_kl": equal_kl}


def _peak(entry: dict[str, Any], form: str, kl_max: float, sft_gold: float) -> dict[str, Any]:
    """Where the fitted gold curve peaks (KL = d*^2), its bootstrap interval, and whether the proxy fit still rises
    there: gold falling while the proxy rises is over-optimisation (Gao et al. 2022)."""
    gold = entry["gold"]
    peak = gao_peak(gold["a"], gold["b"], form)
    with np.errstate(over="ignore"):  # an RL peak far outside the data overflows to inf: no peak there
        peaks = gao_peak(*entry["_gold_draws"], form) ** 2
    found = peaks[np.isfinite(peaks)]
    low, high = percentile_interval(found) if found.size else (math.nan, math.nan)
    if math.isnan(peak):
        where = "no peak: the fitted gold reward still rises"
    elif peak**2 <= kl_max:
        where = f"within the KL range measured (0 to {kl_max:.3g})"
    else:
        where = "beyond the largest KL measured (an extrapolation)"
    result = {
        "kl": peak**2,
        "inside": bool(not math.isnan(peak) and peak**2 <= kl_max),
        "gold": sft_gold + float(gao_curve(peak, gold["a"], gold["b"], form))
        if not math.isnan(peak)
        else math.nan,
        "ci_low": low,
        "ci_high": high,
        "share_with_peak": found.size / len(peaks),
        "where": where,
    }
    if "proxy" in entry and not math.isnan(peak):
        proxy = entry["proxy"]
        if form == "best_of_n":
            slope = proxy["a"] - 2 * proxy["b"] * peak
        else:
            slope = proxy["a"] - proxy["b"] * (math.log(peak) + 1)
        result["proxy_still_rising"] = bool(slope > 0)
    return result


def _equal_kl(
    fits: dict[str, Any], sft_gold: float, sft_draws: np.ndarray, grid_points: int
) -> dict[str, Any] | None:
    """Each fitted arm's gold at common KL values, with intervals, and who is ahead at each."""
    if len(fits) < 2:
        return None
    common = min(entry["kl_range"][1] for entry in fits.values())
    if not common > 0:
        return None
    grid = [common * (i + 1) / grid_points for i in range(grid_points)]
    values: list[dict[str, Any]] = []
    for kl in grid:
        d = math.sqrt(kl)
        point = {
            arm: sft_gold + float(gao_curve(d, e["gold"]["a"], e["gold"]["b"], e["form"]))
            for arm, e in fits.items()
        }
        draws = {
            arm: sft_draws + gao_curve(d, e["_gold_draws"][0], e["_gold_draws"][1], e["form"])
            for arm, e in fits.items()
        }
        leader = max(point, key=lambda arm: point[arm])
        versus = {}
        for arm in point:
            if arm == leader:
                continue
            difference = draws[leader] - draws[arm]
            difference = difference[np.isfinite(difference)]
            low, high = percentile_interval(difference) if difference.size else (math.nan, math.nan)
            versus[arm] = {"difference": point[leader] - point[arm], "ci_low": low, "ci_high": high}
        values.append(
            {
                "kl": kl,
                "gold": {
                    arm: {
                        "mean": point[arm],
                        **dict(
                            zip(
                                ("ci_low", "ci_high"),
                                percentile_interval(draws[arm][np.isfinite(draws[arm])]),
                                strict=True,
                            )
                        ),
                    }
                    for arm in point
                },
                "leader": leader,
                "leader_vs": versus,
                "ahead": all(v["ci_low"] > 0 for v in versus.values()),
            }
        )
    return {"kl_max_common": common, "values": values}


def analyse(
    reference: Mapping[int, Mapping[str, Any]],
    results: list[Mapping[str, Any]],
    replicates: int = REPLICATES,
    alpha: float = ALPHA,
) -> dict[str, Any] | None:
    """The paired analysis of a comparison from its per-prompt scores, or None without a gold reward.
    `reference`: the SFT policy's scores per seed; `results`: each arm's (arm, stage, setting, seed, metrics,
    scores); scores are columns prompt_index, sample, gold, rm, kl (as compare.json holds them)."""
    if not results or any(scores.get("gold") is None for scores in reference.values()):
        return None
    prompts = 1 + max(max(s["prompt_index"]) for s in reference.values())
    policies = [_Policy(r, prompts) for r in results]
    if any(p.gold is None for p in policies):
        return None
    comparisons = compare_policies(reference, policies, replicates, alpha)
    return {
        "alpha": alpha,
        "power": POWER,
        "replicates": replicates,
        "prompts": prompts,
        "binary_gold": _is_binary(
            [*(r["gold"] for r in reference.values()), *(p.raw_gold for p in policies)]
        ),
        "comparisons": comparisons,
        **curve_fits(reference, policies, replicates),
    }
