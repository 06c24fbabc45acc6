"""Evaluation of a policy on held-out prompts: `alignment eval`, and what the pipeline and `alignment compare` use.

    alignment eval --policy runs/quickstart/dpo --prompts builtin:tasks --prompts-option split=test \
        --reference runs/quickstart/sft --rm runs/quickstart/reward --gold rule:tasks

Responses are generated with one recorded, seeded decoding config (`Decoding`); on those same responses it reports,
each with a 95% confidence interval (normal approximation over samples): the mean proxy-RM score, the mean gold
score, KL(policy || reference) estimated on the policy's own samples (per sequence, the sum over response tokens of
log policy - log reference, both at the sampling temperature: the k1 estimator, the same for every algorithm),
response length, EOS rate, distinct-n, and the win rate against the reference's responses to the same prompts
(paired sample by sample, ties counted apart) judged by the RM and by the gold reward. Writes `eval.json`,
`samples.jsonl` and a W&B table of samples.

Best-of-n (`best_of`): n samples of the policy per prompt, the one the RM ranks highest is the response. Its KL to
the policy it samples from is not estimable from samples (the selection has no tractable log-probability); the
report gives the analytic value log n - (n - 1) / n (Stiennon et al. 2020, an upper bound: Beirami et al. 2024).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads on first use: `alignment --help` and the service's commands stay fast
    import torch

logger = logging.getLogger(__name__)


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says which option and what to do."""


@dataclass
class Decoding:
    """How responses are generated; recorded with every result so that a figure can be reproduced."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    """0 is greedy. KL to the reference is estimated only on sampled responses (temperature > 0), with both
    models' logits divided by this temperature. No top-k / top-p: samples come from the policy itself."""
    samples_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 16


@dataclass
class Samples:
    """Responses of one policy, one per (prompt, sample) in prompt order."""

    prompt_index: list[int]
    completions: list[str]
    response_ids: list[list[int]]
    """Response tokens through the first EOS."""
    ended: list[bool]
    kl: list[float] | None = None
    """Per sample: sum over response tokens of log policy - log reference (None without a reference)."""

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.response_ids]


def _response_logprobs(
    model: Any, sequences: torch.Tensor, attention_mask: torch.Tensor, query_length: int, temperature: float
) -> torch.Tensor:
    """log p(token) of every response position (batch, response_length), logits divided by `temperature`."""
    from alignment.rl.ppo_math import gather_response_logprobs, last_positions, position_ids_from

    response = sequences[:, query_length:]
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        # the positions that predict response tokens (and the last)
        logits_to_keep=last_positions(sequences.shape[1], response.shape[1] + 1, sequences.device),
    ).logits
    return gather_response_logprobs(logits[:, :-1], response, temperature)


def sample(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    decoding: Decoding,
    reference: Any = None,
    progress: Any = None,
    engine: Any = None,
) -> Samples:
    """`decoding.samples_per_prompt` responses per chat prompt, seeded, batched by prompt length; with `reference`,
    also each sample's log-ratio to it. The global RNG state is left as it was. `progress(n)` is called per batch.

    `engine` (alignment.generation, holding `policy`'s weights) draws the responses instead of `policy.generate`.
    Under `accelerate launch` every process samples its share of the (prompt, sample) pairs and all of them
    receive every response."""
    import torch

    with torch.no_grad():
        return _sample(policy, tokenizer, prompts, decoding, reference, progress, engine)


def process_state() -> Any:
    """Accelerate's view of this process (rank, world size, device): under `accelerate launch` without CUDA the
    processes join over gloo on the CPU (`cpu=True`; otherwise each would see a world of one)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def sharded(count: int, compute: Any) -> list[Any]:
    """`compute(indices)` -> one result per index, over this process's share of range(count) (every
    num_processes-th index from its rank), gathered so that every process returns all `count` results in order.
    One process: `compute(all indices)`."""
    state = process_state()
    if state.num_processes == 1:
        return compute(list(range(count)))
    from accelerate.utils import gather_object

    share = list(range(count))[state.process_index :: state.num_processes]
    results = compute(share)
    ordered: list[Any] = [None] * count
    for indices, values in gather_object([(share, results)]):
        for i, value in zip(indices, values, strict=True):
            ordered[i] = value
    return ordered


def _sample(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    decoding: Decoding,
    reference: Any,
    progress: Any,
    engine: Any = None,
) -> Samples:
    if reference is not None and not decoding.temperature:
        raise EvalError(
            "KL to the reference is estimated on sampled responses; greedy decoding (temperature 0) gives none. "
            "Set a temperature (1.0: the policy's own distribution)"
        )
    tokenizer.padding_side = "left"  # generation appends on the right
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    index = [i for i in range(len(texts)) for _ in range(decoding.samples_per_prompt)]
    seed = decoding.seed + process_state().process_index  # one process: the decoding's seed itself
    rows = sharded(
        len(index),
        lambda share: _sample_share(
            share, texts, index, policy, tokenizer, decoding, seed, reference, progress, engine
        ),
    )
    completions, response_ids, ended, kl = (list(column) for column in zip(*rows, strict=True))
    return Samples(index, completions, response_ids, ended, kl if reference is not None else None)


ENGINE_CHUNK = 256
"""Pairs per engine call: the engine schedules its own batches; the chunks only pace the progress bar."""


def _sample_share(
    share: list[int],
    texts: list[str],
    index: list[int],
    policy: Any,
    tokenizer: Any,
    decoding: Decoding,
    seed: int,
    reference: Any,
    progress: Any,
    engine: Any,
) -> list[tuple[str, list[int], bool, float]]:
    """(completion, response ids, ended, log-ratio to the reference) of each pair k in `share`."""
    import torch

    from alignment.generation import Sampling
    from alignment.rl.ppo_math import response_mask

    order = sorted(share, key=lambda k: len(texts[index[k]]))  # less padding per batch
    results: dict[int, tuple[str, list[int], bool, float]] = {}
    sampling = (
        {"do_sample": True, "temperature": decoding.temperature, "top_k": 0, "top_p": 1.0}
        if decoding.temperature
        else {"do_sample": False}
    )
    width = decoding.batch_size if engine is None else max(decoding.batch_size, ENGINE_CHUNK)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(order), width):
            chunk = order[start : start + width]
            batch = tokenizer(
                [texts[index[k]] for k in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(policy.device)
            query_length = batch["input_ids"].shape[1]
            if engine is None:
                response = policy.generate(
                    **batch,
                    max_new_tokens=decoding.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )[:, query_length:]  # (B, T)
            else:
                call = Sampling(decoding.max_new_tokens, decoding.temperature, seed + start)
                response = engine.generate(batch["input_ids"], batch["attention_mask"], call).response
            mask, has_eos = response_mask(response, tokenizer.eos_token_id)
            response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
            log_ratio = [0.0] * len(chunk)
            if reference is not None:
                sequences = torch.cat([batch["input_ids"], response], dim=1)
                attention_mask = torch.cat([batch["attention_mask"], mask.long()], dim=1)
                log_ratio = []
                for first in range(0, len(chunk), decoding.batch_size):
                    rows = slice(first, first + decoding.batch_size)
                    difference = _response_logprobs(
                        policy, sequences[rows], attention_mask[rows], query_length, decoding.temperature
                    ) - _response_logprobs(
                        reference, sequences[rows], attention_mask[rows], query_length, decoding.temperature
                    )
                    log_ratio += (difference * mask[rows]).sum(dim=1).tolist()
            without_eos = torch.where(response == tokenizer.eos_token_id, tokenizer.pad_token_id, response)
            decoded = tokenizer.batch_decode(without_eos, skip_special_tokens=True)
            for row, k in enumerate(chunk):
                ids = response[row, : int(mask[row].sum())].tolist()
                results[k] = (decoded[row].strip(), ids, bool(has_eos[row]), log_ratio[row])
            if progress is not None:
                progress(len(chunk))
    finally:
        torch.random.set_rng_state(rng_state)
    return [results[k] for k in share]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Completions (special tokens stripped) for chat prompts; greedy when temperature is 0."""
    decoding = Decoding(max_new_tokens, temperature, 1, seed, batch_size)
    return sample(model, tokenizer, prompts, decoding).completions


def sampled_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """KL(policy || reference) per sequence on the policy's own samples (see the module docstring), with the
    samples' length, EOS rate, completions and token ids."""
    decoding = Decoding(max_new_tokens, temperature, samples_per_prompt, seed, batch_size)
    samples = sample(policy, tokenizer, prompts, decoding, reference=reference)
    assert samples.kl is not None
    mean, half_width = mean_and_half_width(samples.kl)
    return {
        "mean": mean,
        "ci95_half_width": half_width,
        "n": len(samples.kl),
        "per_sample": samples.kl,
        "mean_length": sum(samples.lengths) / len(samples.lengths),
        "eos_rate": sum(samples.ended) / len(samples.ended),
        "completions": samples.completions,
        "response_ids": samples.response_ids,
        "temperature": temperature,
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------------- statistics
def mean_and_half_width(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation, 1.96 standard errors; NaN for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * (variance / n) ** 0.5


def paired_difference(
    scores: Sequence[float], reference_scores: Sequence[float], groups: Sequence[int]
) -> dict[str, float | int]:
    """The mean of `scores - reference_scores`, paired sample by sample (two policies sampled on the same prompts,
    with the same seeds), with its standard error over the independent units `groups` (the prompt of each
    sample): the samples of one prompt are averaged first, since they share the prompt's difficulty.

    Returns the mean difference, its standard error (sd of the per-group means / sqrt(groups)), z = mean / SE
    and the one-sided p-value of "no improvement" under the normal approximation (fine from ~30 groups on).
    Identical score lists give z = 0 and p = 0.5: no evidence either way."""
    if not len(scores) == len(reference_scores) == len(groups):
        raise ValueError(
            f"paired scores differ in length: {len(scores)}, {len(reference_scores)} and {len(groups)} groups"
        )
    per_group: dict[int, list[float]] = {}
    for group, score, reference in zip(groups, scores, reference_scores, strict=True):
        per_group.setdefault(group, []).append(score - reference)
    if len(per_group) < 2:
        raise ValueError("a paired standard error needs at least 2 groups (prompts)")
    means = [sum(d) / len(d) for d in per_group.values()]
    count = len(means)
    mean = sum(means) / count
    standard_error = math.sqrt(sum((m - mean) ** 2 for m in means) / (count - 1) / count)
    if standard_error > 0:
        z = mean / standard_error
    else:
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return {
        "mean": mean,
        "standard_error": standard_error,
        "z": z,
        "p_one_sided": 0.5 * math.erfc(z / math.sqrt(2)),
        "groups": count,
    }


def summary(values: Sequence[float]) -> dict[str, float | int]:
    mean, half_width = mean_and_half_width(values)
    return {"mean": mean, "ci95_half_width": half_width, "n": len(values)}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all responses (whitespace words; the same for every tokenizer)."""
    grams = [
        tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def win_rate(scores: Sequence[float], reference_scores: Sequence[float], tie_tolerance: float = 1e-6) -> dict:
    """Paired comparison: the share of samples whose score beats the reference's on the same prompt, ties apart.

    `win_rate` counts wins over all pairs (ties lose nothing and win nothing); its CI is the normal interval of a
    proportion. `win_rate_excluding_ties` is wins / (wins + losses)."""
    if len(scores) != len(reference_scores) or not scores:
        raise ValueError("win rate needs as many reference scores as scores, and at least one")
    wins = sum(s > r + tie_tolerance for s, r in zip(scores, reference_scores, strict=True))
    losses = sum(r > s + tie_tolerance for s, r in zip(scores, reference_scores, strict=True))
    ties = len(scores) - wins - losses
    n = len(scores)
    rate = wins / n
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "n": n,
        "win_rate": rate,
        "tie_rate": ties / n,
        "ci95_half_width": 1.96 * math.sqrt(rate * (1 - rate) / n),
        "win_rate_excluding_ties": wins / (wins + losses) if wins + losses else float("nan"),
    }


def best_of_n_kl(n: int) -> float:
    """Analytic KL of best-of-n sampling to the sampled policy: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------------- evaluation
class PolicySampler:
    """Loads the policies of an evaluation one after another, in `dtype` on this process's device, and samples
    them on one generation engine (`generation.backend`): a vLLM engine is built for the first policy and takes
    each next one's weights by `sync_weights`, so its start-up is paid once per evaluation, not per policy.

    `dtype` is `model.dtype`'s name: `auto` is bf16 where the device has bf16 units (alignment.precision).
    Backend `hf` samples with `generate` (multinomial, the global RNG seeded per process)."""

    def __init__(self, generation: Any = None, dtype: str = "float32") -> None:
        from alignment.generation import GenerationConfig, resolve_backend
        from alignment.precision import dtype_name, inference_dtype

        generation = generation or GenerationConfig(backend="hf")
        self.device = process_state().device
        self.dtype = inference_dtype(dtype, self.device)
        if generation.dtype == "auto":  # the engine samples in the dtype the policies load in
            generation = dataclasses.replace(generation, dtype=dtype_name(self.dtype))
        self.generation = generation
        self.backend = resolve_backend(self.generation, self.device)
        self._engine: Any = None
        self._shape: Any = None

    @property
    def record(self) -> dict[str, str]:
        """What evaluation results record of the sampler: its backend and dtype."""
        from alignment.precision import dtype_name

        return {"backend": self.backend, "dtype": dtype_name(self.dtype)}

    def load(self, path: str | Path) -> tuple[Any, Any]:
        """(model, tokenizer) of a policy artifact, in the sampler's dtype on its device."""
        from alignment.models import load_artifact_for_inference

        model, tokenizer = load_artifact_for_inference(path, self.dtype)
        return model.to(self.device), tokenizer

    def engine(self, model: Any, tokenizer: Any) -> Any:
        """The engine holding `model`'s weights (None for `hf`: `sample` calls `model.generate`)."""
        if self.backend == "hf":
            return None
        from alignment.generation import create_engine

        config = model.config
        shape = (type(model).__name__, config.vocab_size, config.hidden_size, config.num_hidden_layers)
        if self._engine is None or shape != self._shape:
            self._engine = None  # the old engine's memory goes before the new one is built
            self._engine = create_engine(self.generation, model, tokenizer, self.device, backend=self.backend)
            self._shape = shape
        else:
            self._engine.sync_weights(model)
        return self._engine


def _scores(reward: Any, rows: Sequence[dict[str, Any]], samples: Samples) -> list[float]:
    """The reward of every sample; under `accelerate launch` each process scores its share."""
    prompts = [rows[i]["prompt"] for i in samples.prompt_index]
    golds = [rows[i].get("gold") for i in samples.prompt_index]

    def score(share: list[int]) -> list[float]:
        gold = [golds[k] for k in share] if all(golds) else None
        return reward.score(
            [prompts[k] for k in share], [samples.completions[k] for k in share], gold
        ).tolist()

    return sharded(len(prompts), score)


def _select(samples: Samples, keep: list[int]) -> Samples:
    return Samples(
        [samples.prompt_index[k] for k in keep],
        [samples.completions[k] for k in keep],
        [samples.response_ids[k] for k in keep],
        [samples.ended[k] for k in keep],
        None if samples.kl is None else [samples.kl[k] for k in keep],
    )


def _policy_metrics(samples: Samples, rm_scores: list[float] | None, gold_scores: list[float] | None) -> dict:
    metrics: dict[str, Any] = {
        "length": summary([float(n) for n in samples.lengths]),
        "eos_rate": sum(samples.ended) / len(samples.ended),
        "distinct_1": distinct_n(samples.completions, 1),
        "distinct_2": distinct_n(samples.completions, 2),
    }
    if rm_scores is not None:
        metrics["rm_score"] = summary(rm_scores)
    if gold_scores is not None:
        metrics["gold"] = summary(gold_scores)
    if samples.kl is not None:
        metrics["kl"] = {**summary(samples.kl), "estimator": "sampled: sum of token log-ratios (k1)"}
    return metrics


@dataclass
class Scored:
    """One policy's samples with their scores; what win rates are computed against."""

    samples: Samples
    rm_scores: list[float] | None
    gold_scores: list[float] | None


def evaluate(
    policy: str | Path,
    rows: Sequence[dict[str, Any]],
    decoding: Decoding,
    reference: str | Path | None = None,
    rm: Any = None,
    gold: Any = None,
    reference_scored: Scored | None = None,
    best_of: int = 1,
    progress: Any = None,
    sampler: PolicySampler | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], Scored]:
    """Metrics, per-sample records and the scored samples of `policy` on prompt `rows` (see the module docstring).

    `rm` and `gold` are reward_models objects (or None); `reference_scored` reuses the reference's scored samples
    (same rows and decoding) instead of generating them again. With `best_of` > 1, each response is the RM's
    choice among `best_of` samples of the policy (needs `rm`). `sampler` says on which device, in which dtype and
    on which engine (default: fp32, `generate`)."""
    if best_of > 1 and rm is None:
        raise EvalError("best-of-n needs a reward model to rank the samples (--rm)")
    sampler = sampler or PolicySampler()
    model, tokenizer = sampler.load(policy)
    reference_model = None
    if reference is not None:
        reference_model, reference_tokenizer = sampler.load(reference)
        if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise EvalError(
                f"policy {policy} and reference {reference} have different tokenizers: the KL between them is "
                "not defined token by token. Use the policy's own SFT artifact as the reference"
            )
    prompts = [row["prompt"] for row in rows]
    if best_of > 1:
        wide = dataclasses.replace(decoding, samples_per_prompt=decoding.samples_per_prompt * best_of)
        candidates = sample(
            model, tokenizer, prompts, wide, progress=progress, engine=sampler.engine(model, tokenizer)
        )
        candidate_rm = _scores(rm, rows, candidates)
        keep = [  # per prompt and draw, the best of its `best_of` consecutive candidates
            max(range(start, start + best_of), key=lambda k: candidate_rm[k])
            for start in range(0, len(candidate_rm), best_of)
        ]
        samples = _select(candidates, keep)
        rm_scores: list[float] | None = [candidate_rm[k] for k in keep]
    else:
        kl_reference = reference_model if decoding.temperature else None
        engine = sampler.engine(model, tokenizer)
        samples = sample(model, tokenizer, prompts, decoding, kl_reference, progress, engine)
        rm_scores = _scores(rm, rows, samples) if rm is not None else None
    gold_scores = _scores(gold, rows, samples) if gold is not None else None
    metrics = _policy_metrics(samples, rm_scores, gold_scores)
    if best_of > 1:
        metrics["kl"] = {"mean": best_of_n_kl(best_of), "ci95_half_width": 0.0, "n": len(samples.completions)}
        metrics["kl"]["estimator"] = f"analytic best-of-{best_of}: log n - (n - 1) / n"
    elif reference is not None and not decoding.temperature:
        metrics["kl"] = None  # greedy responses are no samples of the policy; see Decoding.temperature
    scored = Scored(samples, rm_scores, gold_scores)
    if reference_model is not None and reference_scored is None:
        engine = sampler.engine(reference_model, tokenizer)
        reference_samples = sample(
            reference_model, tokenizer, prompts, decoding, progress=progress, engine=engine
        )
        reference_scored = Scored(
            reference_samples,
            _scores(rm, rows, reference_samples) if rm is not None else None,
            _scores(gold, rows, reference_samples) if gold is not None else None,
        )
    records = [
        {
            "prompt_index": i,
            "prompt": rows[i]["prompt"],
            "completion": samples.completions[k],
            "response_ids": samples.response_ids[k],
            "length": samples.lengths[k],
            "ended": samples.ended[k],
            **({"rm_score": rm_scores[k]} if rm_scores is not None else {}),
            **({"gold_score": gold_scores[k]} if gold_scores is not None else {}),
            **({"kl": samples.kl[k]} if samples.kl is not None else {}),
        }
        for k, i in enumerate(samples.prompt_index)
    ]
    if reference_scored is not None:
        if reference_scored.samples.prompt_index != samples.prompt_index:
            raise EvalError(
                "the reference's samples answer other prompts than the policy's (rows or decoding differ)"
            )
        metrics["reference"] = _policy_metrics(
            reference_scored.samples, reference_scored.rm_scores, reference_scored.gold_scores
        )
        for name, own, theirs in (
            ("win_rate_rm", rm_scores, reference_scored.rm_scores),
            ("win_rate_gold", gold_scores, reference_scored.gold_scores),
        ):
            if own is not None and theirs is not None:
                metrics[name] = win_rate(own, theirs)
        for record, k in zip(records, range(len(records)), strict=True):
            record["reference_completion"] = reference_scored.samples.completions[k]
    return metrics, records, scored


def gold_score_policy(
    policy: str | Path,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    samples_per_prompt: int = 1,
    seed: int = 0,
    sampler: PolicySampler | None = None,
) -> dict[str, Any]:
    """Mean gold score (reward_models.rules) of a policy artifact's answers to prompt rows with `gold`: greedy by
    default, or `samples_per_prompt` samples per prompt at `temperature` (seeded), the expected score of the
    policy as it samples. `sampler`: device, dtype and engine (default: fp32, `generate`)."""
    from reward_models.rules import score_gold

    if samples_per_prompt > 1 and not temperature:
        raise ValueError(
            "samples_per_prompt > 1 needs a sampling temperature (greedy answers are all the same)"
        )
    sampler = sampler or PolicySampler()
    model, tokenizer = sampler.load(policy)
    decoding = Decoding(max_new_tokens, temperature, samples_per_prompt, seed, batch_size)
    prompts = [row["prompt"] for row in rows]
    samples = sample(model, tokenizer, prompts, decoding, engine=sampler.engine(model, tokenizer))
    completions = samples.completions
    scores = [
        score_gold(rows[i]["gold"], text) for i, text in zip(samples.prompt_index, completions, strict=True)
    ]
    return {
        "mean": sum(scores) / len(scores),
        "n": len(scores),
        "scores": scores,
        "prompt_index": samples.prompt_index,
        "completions": completions,
    }


# ----------------------------------------------------------------------------------------------------- the CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="policy artifact directory (a stage's output)")
    parser.add_argument(
        "--prompts", required=True, help="prompt source: a file, a dataset folder, builtin:tasks"
    )
    parser.add_argument(
        "--prompts-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the prompt source's data config, e.g. split=test, seed=1234, task_count=64 (repeatable)",
    )
    parser.add_argument(
        "--reference", help="reference artifact (the SFT policy): KL and win rates against it"
    )
    parser.add_argument("--rm", help="proxy reward: RM artifact dir, rule:..., or mix:w*spec+w*spec")
    parser.add_argument("--gold", help="gold reward: rule:tasks or rule:gsm8k (prompts need a `gold` field)")
    parser.add_argument("--best-of", type=int, default=1, help="best-of-n: the RM picks 1 of n samples")
    parser.add_argument("--out", help="output directory (default: runs/eval/<policy dir name>)")
    parser.add_argument("--limit", type=int, help="evaluate the first N prompts only")
    for field in dataclasses.fields(Decoding):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "hf", "vllm"],
        help="generation engine: vllm where it is installed (auto), or transformers' generate (hf)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="the models' dtype; auto: bf16 where the device has bf16 units (AMX, AVX512-BF16, bf16 GPUs)",
    )
    parser.add_argument(
        "--accelerate-config",
        help="evaluate under `accelerate launch` with this config: each process samples and scores its share "
        "of the prompts, the first writes the results (e.g. configs/accelerate/multi_gpu.yaml)",
    )
    parser.add_argument("--tracking", default="auto", choices=["auto", "online", "offline", "disabled"])
    parser.add_argument("--wandb-project", default="alignment")
    parser.add_argument("--wandb-group", help="W&B group (default: none)")


def load_prompt_rows(source: str, options: Sequence[str], limit: int | None = None) -> tuple[Any, list[dict]]:
    """Prompt rows of a source, with `key=value` data-config options; (the data config, the rows)."""
    from alignment.config import coerce, parse_overrides
    from alignment.data import DataConfig, load_checked

    config = coerce(DataConfig, {"source": source, **parse_overrides(list(options))}, "--prompts-option", "")
    rows = load_checked(config, "prompt").rows
    if not rows:
        raise EvalError(f"{source}: no prompts")
    return config, rows[:limit] if limit else rows


def load_reward(spec: str | None, option: str = "--rm", **kwargs: Any) -> Any:
    """A reward from its spec (None: none); `kwargs` go to a learned RM (device, dtype, batch_size)."""
    import reward_models

    try:
        return reward_models.load(spec, **kwargs) if spec else None
    except ValueError as error:
        raise EvalError(f"{option} {spec}: {error}") from error


def write_results(out: Path, result: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from alignment.artifacts import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl.tmp", "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")
    write_json_atomic(out / "eval.json", result)


def _relaunch(args: argparse.Namespace) -> int:
    """`alignment eval` again under `accelerate launch --config_file args.accelerate_config`, same options."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    config = Path(args.accelerate_config)
    if not config.is_file():
        raise EvalError(
            f"--accelerate-config {config}: no such file (configs/accelerate/ has the shipped ones)"
        )
    argv = sys.argv[1:]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    settings = yaml.safe_load(config.read_text()) or {}
    if int(settings.get("num_machines", 1)) == 1 and "main_process_port" not in settings:
        # one machine: a free port, not accelerate's fixed 29500 (another launch may still hold it)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            command += ["--main_process_port", str(probe.getsockname()[1])]
    command += ["-m", "alignment.cli", *argv]
    return subprocess.call(command, env={**os.environ, LAUNCHED_ENV: "1"})


LAUNCHED_ENV = "ALIGNMENT_EVAL_LAUNCHED"


def main(args: argparse.Namespace) -> int:
    import os

    from accelerate.utils import gather_object
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from alignment.generation import GenerationConfig
    from alignment.progress import quiet_library_noise
    from alignment.tracking import log_results

    quiet_library_noise(loading_bars=True)

    if args.accelerate_config and not os.environ.get(LAUNCHED_ENV):
        return _relaunch(args)
    state = process_state()
    console = Console(soft_wrap=True, quiet=not state.is_main_process)
    decoding = Decoding(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Decoding)})
    data_config, rows = load_prompt_rows(args.prompts, args.prompts_option, args.limit)
    if args.gold and not all(row.get("gold") for row in rows):
        raise EvalError(
            f"--gold {args.gold}: the prompts of {args.prompts} have no `gold` field to check against"
        )
    sampler = PolicySampler(GenerationConfig(backend=args.backend), args.dtype)
    rm = load_reward(args.rm, dtype=sampler.dtype, device=sampler.device)
    gold = load_reward(args.gold, "--gold")
    out = Path(args.out or Path("runs") / "eval" / Path(args.policy).resolve().name)
    total = len(rows) * decoding.samples_per_prompt * (args.best_of + (1 if args.reference else 0))
    share = f" (this process's share of {state.num_processes})" if state.num_processes > 1 else ""
    columns = (
        *Progress.get_default_columns()[:2],
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # An interactive console only (rich draws nothing elsewhere): responses drawn / total, elapsed, ETA.
    with Progress(*columns, console=console, transient=True, disable=not state.is_main_process) as progress:
        task = progress.add_task(
            f"sampling {len(rows)} prompts{share}: responses", total=total // state.num_processes
        )
        done = [0]  # responses this process drew

        def advance(n: int) -> None:
            done[0] += n
            progress.advance(task, n)

        metrics, records, _ = evaluate(
            args.policy,
            rows,
            decoding,
            reference=args.reference,
            rm=rm,
            gold=gold,
            best_of=args.best_of,
            progress=advance,
            sampler=sampler,
        )
    per_process = gather_object([done[0]]) if state.num_processes > 1 else done
    if not state.is_main_process:
        state.wait_for_everyone()  # every process leaves together, after the first has written the results
        return 0
    result = {
        "policy": str(args.policy),
        "reference": args.reference,
        "rm": args.rm,
        "gold": args.gold,
        "best_of": args.best_of,
        "prompts": dataclasses.asdict(data_config),
        "n_prompts": len(rows),
        "decoding": dataclasses.asdict(decoding),
        "engine": sampler.record,
        "processes": state.num_processes,
        "responses_per_process": per_process,
        "metrics": metrics,
    }
    write_results(out, result, records)
    log_results(
        project=args.wandb_project,
        group=args.wandb_group,
        job_type="eval",
        name=f"eval-{Path(args.policy).name}",
        directory=out,
        config={k: v for k, v in result.items() if k != "metrics"},
        summary=metrics,
        tables={"samples": records},
        mode=args.tracking,
    )
    console.print(metrics_table(f"{args.policy} on {len(rows)} prompts", metrics))
    console.print(f"wrote {out / 'eval.json'} and {out / 'samples.jsonl'}")
    state.wait_for_everyone()
    return 0


def metrics_table(title: str, metrics: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value (95% CI)")

    def shown(item: dict[str, Any]) -> str:
        half = item.get("ci95_half_width")
        return f"{item['mean']:.4f}" + (f" ± {half:.4f}" if half is not None and not math.isnan(half) else "")

    for name in ("gold", "rm_score", "kl", "length"):
        if metrics.get(name):
            table.add_row(
                name, shown(metrics[name]) + (f"  ({metrics[name]['estimator']})" if name == "kl" else "")
            )
    table.add_row("eos_rate", f"{metrics['eos_rate']:.3f}")
    table.add_row("distinct-1 / distinct-2", f"{metrics['distinct_1']:.3f} / {metrics['distinct_2']:.3f}")
    for name in ("win_rate_gold", "win_rate_rm"):
        if name in metrics:
            w = metrics[name]
            table.add_row(
                f"{name} vs reference",
                f"{w['win_rate']:.3f} ± {w['ci95_half_width']:.3f} (wins {w['wins']}, ties {w['ties']}, "
                f"losses {w['losses']})",
            )
    return table
