"""`alignment compare`: RLHF vs DPO (and GRPO, RLOO, best-of-n) from one SFT policy, on one evaluation.

    alignment compare configs/compare/quickstart.yaml [key=value ...] [--dry-run]

1. The comparison's pipeline (`pipeline:`) trains SFT and the reward model once, into OUTPUT/base (the runner's
   rules: a complete artifact with the same config is skipped).
2. Every arm x setting x seed runs its one stage from that SFT artifact (rewarded by that RM where its spec says
   `reward`) into OUTPUT/arms/<arm>/<setting>/seed-<seed>: a pipeline run of its own, so a re-run reuses every
   finished arm. Best-of-n trains nothing: it samples the SFT policy at evaluation.
3. Every policy, and the SFT policy itself, is evaluated by alignment.evaluate on the same held-out prompts with
   the same decoding, one evaluation seed per training seed; win rates pair each policy's samples with the SFT
   policy's. Evaluations are cached by the manifest hashes of what they read.
4. OUTPUT/report.md: one row per arm and setting (mean and 95% CI over seeds), paired comparisons of the gold score
   prompt by prompt (alignment.statistics: bootstrap intervals over prompts and seeds, exact tests for a binary
   gold, Holm-corrected), gold at equal KL and Gao et al.'s over-optimisation fits, plots (alignment.report), a
   summary in plain words computed from them, and what reproduces it (command, code version, config hashes,
   engine and precision); OUTPUT/compare.json holds every number, every per-prompt score included.
All stages and the comparison's own W&B run share one W&B group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment import artifacts
from alignment.config import (
    ConfigError,
    PipelineConfig,
    coerce,
    deep_merge,
    expand_tree,
    load_pipeline,
    parse_overrides,
    read_yaml,
)
from alignment.data import DataConfig
from alignment.evaluate import Decoding, Samples, Scored
from alignment.generation import GenerationConfig

TRAINED = ("dpo", "ppo", "grpo", "rloo")
BEST_OF_N = "best_of_n"


@dataclass
class ArmConfig:
    """One algorithm of the comparison, over a grid of settings."""

    name: str
    stage: str
    """dpo | ppo | grpo | rloo (the pipeline's section of that name) or best_of_n (sampling, no training)."""
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    """Keys of the stage's section (best_of_n: `n`) -> values; every combination is one setting."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Fixed keys of the stage's section for this arm, e.g. `loss_type: ipo`."""


@dataclass
class CompareEvaluation:
    prompts: DataConfig = field(
        default_factory=lambda: DataConfig(source="builtin:tasks", split="test", seed=1234, task_count=64)
    )
    """Held-out prompts; with a `gold` field for a gold reward."""
    rm: str | None = "reward"
    """Proxy reward: `reward` (the comparison's RM), another reward_models spec, or null."""
    gold: str | None = "rule:tasks"
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=48, temperature=1.0))
    """Its seed is replaced by each training seed."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """The engine that samples every policy (`alignment.generation`): one vLLM engine serves them all, taking
    each next policy's weights, where vLLM is installed (`auto`). Policies and the RM load in the pipeline's
    `model.dtype` (`auto`: bf16 where the device has bf16 units)."""


@dataclass
class CompareConfig:
    pipeline: str
    """The pipeline YAML with the model and every section the arms use (sft, reward, dpo, ppo, ...)."""
    name: str = "compare"
    output_dir: str = ""
    """Default: runs/<name>."""
    pipeline_overrides: list[str] = field(default_factory=list)
    """`key=value` overrides applied to the pipeline for every run."""
    seeds: list[int] = field(default_factory=lambda: [1])
    arms: list[ArmConfig] = field(default_factory=list)
    evaluation: CompareEvaluation = field(default_factory=CompareEvaluation)


@dataclass
class ArmRun:
    """One trained (or sampled) policy: an arm, one setting of its sweep, one seed."""

    arm: ArmConfig
    setting: dict[str, Any]
    seed: int
    directory: Path

    @property
    def label(self) -> str:
        return setting_label(self.setting)


def setting_label(setting: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in setting.items()) or "default"


def load_compare(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    raw = expand_tree(deep_merge(read_yaml(path), parse_overrides(overrides or [])), str(path))
    config = coerce(CompareConfig, raw, str(path), "")
    config.output_dir = config.output_dir or f"runs/{config.name}"
    pipeline_path = Path(config.pipeline)
    if not pipeline_path.is_file() and (Path(path).parent / pipeline_path).is_file():
        pipeline_path = Path(path).parent / pipeline_path
    if not pipeline_path.is_file():
        raise ConfigError(
            f"{path}: pipeline {config.pipeline} does not exist (relative to the working directory)"
        )
    config.pipeline = str(pipeline_path)
    if not config.arms:
        raise ConfigError(
            f"{path}: `arms` is empty; list at least one (stage: dpo | ppo | grpo | rloo | best_of_n)"
        )
    if not config.seeds:
        raise ConfigError(f"{path}: `seeds` is empty")
    names = [arm.name for arm in config.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: arm names must be unique, got {names}")
    pipeline = load_pipeline(config.pipeline, config.pipeline_overrides)
    for index, arm in enumerate(config.arms):
        where = f"{path}: arms[{index}] ({arm.name})"
        if arm.stage == BEST_OF_N:
            if set(arm.sweep) - {"n"} or set(arm.overrides) - {"n"}:
                raise ConfigError(
                    f"{where}: best_of_n takes only `n` (samples per prompt the RM chooses from)"
                )
            if config.evaluation.rm is None:
                raise ConfigError(f"{where}: best_of_n needs evaluation.rm to rank its samples")
        elif arm.stage not in TRAINED:
            raise ConfigError(f"{where}: stage {arm.stage!r} is not one of {[*TRAINED, BEST_OF_N]}")
        elif arm.stage not in pipeline.stage_sections:
            raise ConfigError(f"{where}: the pipeline {config.pipeline} has no `{arm.stage}:` section")
        for key, values in arm.sweep.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: sweep.{key} must be a non-empty list of values")
    return config


def arm_runs(config: CompareConfig) -> list[ArmRun]:
    runs = []
    for arm in config.arms:
        keys = list(arm.sweep)
        for values in itertools.product(*(arm.sweep[key] for key in keys)):
            setting = {
                **{k: v for k, v in arm.overrides.items() if arm.stage == BEST_OF_N},
                **dict(zip(keys, values, strict=True)),
            }
            for seed in config.seeds:
                directory = (
                    Path(config.output_dir) / "arms" / arm.name / setting_label(setting) / f"seed-{seed}"
                )
                runs.append(ArmRun(arm, setting, seed, directory))
    return runs


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the runner parses it back to the same value


def base_overrides(config: CompareConfig, pipeline: Any) -> list[str]:
    stages = ["sft"] + (["reward"] if "reward" in pipeline.stage_sections else [])
    return [
        *config.pipeline_overrides,
        _override("output_dir", str(Path(config.output_dir) / "base")),
        _override("stages", stages),
        "evaluation=null",
    ]


def arm_overrides(config: CompareConfig, pipeline: PipelineConfig, run: ArmRun, base: Path) -> list[str]:
    from alignment.stages.ppo import resolve_reward_spec

    stage = run.arm.stage
    section = {**pipeline.stage_sections[stage], **run.arm.overrides}
    overrides = [
        *config.pipeline_overrides,
        _override("output_dir", str(run.directory)),
        _override("stages", [stage]),
        _override("seed", run.seed),
        "evaluation=null",
        _override(f"{stage}.init_from", str(base / "sft")),
    ]
    if stage != "dpo":
        spec, _ = resolve_reward_spec(
            str(section.get("reward_model", "reward")), PipelineConfig(output_dir=str(base))
        )
        overrides.append(_override(f"{stage}.reward_model", spec))
    for key, value in {**run.arm.overrides, **run.setting}.items():
        overrides.append(_override(f"{stage}.{key}", value))
    return overrides


# -------------------------------------------------------------------------------------------------- evaluation
def _eval_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _spec_identity(spec: str | None) -> Any:
    """A reward spec with each artifact it names replaced by its manifest hash (a retrained RM is another RM)."""
    if spec is None or spec.startswith("rule:"):
        return spec
    parts = spec[len("mix:") :].split("+") if spec.startswith("mix:") else [spec]
    paths = [part.partition("*")[2] if "*" in part else part for part in parts]
    return [spec, [artifacts.manifest_hash(p) for p in paths if not p.startswith("rule:")]]


def _save_scored(path: Path, scored: Scored) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(
        path, {**dataclasses.asdict(scored.samples), "rm": scored.rm_scores, "gold": scored.gold_scores}
    )


def _load_scored(path: Path) -> Scored:
    data = json.loads(path.read_text())
    rm, gold = data.pop("rm"), data.pop("gold")
    return Scored(Samples(**data), rm, gold)


class Evaluator:
    """Evaluates policies on the comparison's prompts, caching each result beside the run it evaluates."""

    def __init__(self, config: CompareConfig, base: Path, console: Any, dtype: str = "float32") -> None:
        from alignment.evaluate import PolicySampler, load_prompt_rows, load_reward
        from alignment.progress import quiet_library_noise

        quiet_library_noise(loading_bars=True)

        evaluation = config.evaluation
        self.config = config
        self.base = base
        self.console = console
        self.rm_spec = str(base / "reward") if evaluation.rm == "reward" else evaluation.rm
        options = [
            _override(k, v) for k, v in dataclasses.asdict(evaluation.prompts).items() if k != "source"
        ]
        self.prompt_config, self.rows = load_prompt_rows(evaluation.prompts.source, options)
        if evaluation.gold and not all(row.get("gold") for row in self.rows):
            raise ConfigError(
                f"evaluation.gold {evaluation.gold}: the prompts have no `gold` field to check against"
            )
        self.sampler = PolicySampler(evaluation.generation, dtype)
        self.rm = load_reward(self.rm_spec, dtype=self.sampler.dtype, device=self.sampler.device)
        self.gold = load_reward(evaluation.gold, "evaluation.gold")
        self.identity = [
            dataclasses.asdict(self.prompt_config),
            _spec_identity(self.rm_spec),
            evaluation.gold,
            artifacts.manifest_hash(base / "sft"),
            self.sampler.backend,
            str(self.sampler.dtype),
        ]
        self.references: dict[int, Scored] = {}

    def decoding(self, seed: int) -> Decoding:
        return dataclasses.replace(self.config.evaluation.decoding, seed=seed)

    def reference_dir(self, seed: int) -> Path:
        """Where the SFT policy's evaluation at this seed lands (eval.json, samples.jsonl, scored.json)."""
        return Path(self.config.output_dir) / "base" / "eval" / f"seed-{seed}"

    def reference(self, seed: int) -> tuple[dict[str, Any], Scored]:
        """The SFT policy's own evaluation at this seed: the row every arm is compared with."""
        from alignment.evaluate import evaluate, write_results

        out = self.reference_dir(seed)
        key = _eval_key(self.identity, dataclasses.asdict(self.decoding(seed)), "sft")
        cached = self._cached(out, key)
        if cached is not None and (out / "scored.json").is_file():
            return cached, _load_scored(out / "scored.json")
        with self.console.status(f"evaluating the SFT policy (seed {seed}) on {len(self.rows)} prompts"):
            metrics, records, scored = evaluate(
                self.base / "sft",
                self.rows,
                self.decoding(seed),
                rm=self.rm,
                gold=self.gold,
                sampler=self.sampler,
            )
        metrics["kl"] = {
            "mean": 0.0,
            "ci95_half_width": 0.0,
            "n": len(records),
            "estimator": "the reference itself",
        }
        _save_scored(out / "scored.json", scored)
        write_results(out, self._result(key, str(self.base / "sft"), seed, 1, metrics), records)
        return metrics, scored

    def arm(self, run: ArmRun) -> dict[str, Any]:
        from alignment.evaluate import evaluate, write_results

        best_of = int(run.setting.get("n", 1)) if run.arm.stage == BEST_OF_N else 1
        policy = self.base / "sft" if run.arm.stage == BEST_OF_N else run.directory / run.arm.stage
        out = run.directory / "eval"
        key = _eval_key(
            self.identity,
            dataclasses.asdict(self.decoding(run.seed)),
            artifacts.manifest_hash(policy),
            best_of,
        )
        cached = self._cached(out, key)
        if cached is not None:
            return cached
        _, reference = self.reference(run.seed)
        with self.console.status(
            f"evaluating {run.arm.name} {run.label} seed {run.seed} on {len(self.rows)} prompts"
        ):
            metrics, records, _ = evaluate(
                policy,
                self.rows,
                self.decoding(run.seed),
                reference=self.base / "sft",
                rm=self.rm,
                gold=self.gold,
                reference_scored=reference,
                best_of=best_of,
                sampler=self.sampler,
            )
        write_results(out, self._result(key, str(policy), run.seed, best_of, metrics), records)
        return metrics

    def _cached(self, out: Path, key: str) -> dict[str, Any] | None:
        path = out / "eval.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result.get("key") == key:
                return result["metrics"]
        return None

    def _result(
        self, key: str, policy: str, seed: int, best_of: int, metrics: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "key": key,
            "policy": policy,
            "reference": str(self.base / "sft"),
            "rm": self.rm_spec,
            "gold": self.config.evaluation.gold,
            "best_of": best_of,
            "prompts": dataclasses.asdict(self.prompt_config),
            "n_prompts": len(self.rows),
            "decoding": dataclasses.asdict(self.decoding(seed)),
            "engine": self.sampler.record,
            "metrics": metrics,
        }


def read_scores(samples: Path) -> dict[str, list[Any] | None]:
    """Every per-sample score of one evaluation (its samples.jsonl), as columns: prompt_index, sample (the draw's
    index within its prompt), gold, rm and kl (None for a column the evaluation did not record: best-of-n has no
    per-sample KL). What the paired statistics and compare.json use."""
    records = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    draws: dict[int, int] = {}
    sample_index = []
    for record in records:
        index = record["prompt_index"]
        sample_index.append(draws.get(index, 0))
        draws[index] = sample_index[-1] + 1

    def column(key: str) -> list[Any] | None:
        return [r[key] for r in records] if records and all(key in r for r in records) else None

    return {
        "prompt_index": [r["prompt_index"] for r in records],
        "sample": sample_index,
        "gold": column("gold_score"),
        "rm": column("rm_score"),
        "kl": column("kl"),
    }


# ------------------------------------------------------------------------------------------------------ running
def config_digest(config: CompareConfig) -> str:
    """sha256 of the resolved comparison config (all of it, arms and evaluation included)."""
    blob = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def group_id(config: CompareConfig) -> str:
    return f"{config.name}-{config_digest(config)[:8]}"


def provenance(
    config: CompareConfig,
    config_path: str | Path,
    overrides: list[str] | None,
    runs: list[ArmRun],
    base: Path,
    engine: dict[str, str],
) -> dict[str, Any]:
    """What reproduces a comparison: the command, code version, the comparison config's hash, and each artifact's
    config hash, code version and precision (from its manifest); the evaluation engine and dtype."""
    import shlex

    paths = [base / "sft", base / "reward"] + [
        run.directory / run.arm.stage for run in runs if run.arm.stage != BEST_OF_N
    ]
    records = []
    for path in paths:
        if not artifacts.is_complete(path):
            continue
        manifest = artifacts.read_manifest(path)
        records.append(
            {
                "path": str(path),
                "stage": manifest.get("stage"),
                "config_hash": manifest.get("config_hash"),
                "code_version": manifest.get("code_version"),
                "precision": manifest.get("precision"),
            }
        )
    return {
        "command": shlex.join(["alignment", "compare", str(config_path), *(overrides or [])]),
        "code_version": artifacts.code_version(),
        "uncommitted_changes": artifacts.uncommitted_changes(),
        "compare_config_hash": config_digest(config)[:16],
        "seeds": list(config.seeds),
        "evaluation_engine": engine,
        "artifacts": records,
    }


def training_record(run: ArmRun) -> dict[str, Any]:
    """Wall time and tokens processed of an arm's stage, from its artifact (none for best-of-n, which trains
    nothing: its cost is n samples per prompt at inference)."""
    if run.arm.stage == BEST_OF_N:
        return {"wall_time_s": None, "num_tokens": None, "curve": []}
    artifact = run.directory / run.arm.stage
    manifest = artifacts.read_manifest(artifact)
    history_path = artifact / "log_history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    tokens = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    return {
        "wall_time_s": manifest.get("wall_time_s"),
        "num_tokens": tokens[-1] if tokens else None,
        "curve": [entry for entry in history if "step" in entry and "loss" in entry],
    }


def run(config_path: str | Path, overrides: list[str] | None = None, dry_run: bool = False) -> int:
    from rich.console import Console

    from alignment import pipeline as pipeline_runner
    from alignment import report

    console = Console(soft_wrap=True)
    config = load_compare(config_path, overrides)
    output = Path(config.output_dir)
    base = output / "base"
    pipeline = load_pipeline(config.pipeline, config.pipeline_overrides)
    runs = arm_runs(config)
    group = group_id(config)
    os.environ["ALIGNMENT_RUN_ID"] = group  # every stage of every arm lands in one W&B group
    console.print(
        f"[bold]compare {config.name}[/bold]: {len(config.arms)} arms, {len(runs)} runs over seeds {config.seeds} "
        f"(W&B group {group})"
    )
    code = pipeline_runner.run(config.pipeline, base_overrides(config, pipeline), dry_run=dry_run)
    if code:
        console.print(
            f"[red]the base pipeline (SFT, reward model) failed[/red]; see its logs under {base / 'logs'}"
        )
        return code
    # An arm that fails does not stop the others: they still train, are evaluated and reported.
    trained: list[ArmRun] = []
    failed: list[dict[str, Any]] = []
    for index, arm_run in enumerate(runs, 1):
        if arm_run.arm.stage == BEST_OF_N:  # nothing to train
            trained.append(arm_run)
            continue
        console.print(
            f"[bold]arm {index}/{len(runs)}[/bold]: {arm_run.arm.name} {arm_run.label} seed {arm_run.seed}"
        )
        code = pipeline_runner.run(
            config.pipeline,
            arm_overrides(config, pipeline, arm_run, base),
            dry_run=dry_run,
            label=f"arm {index}/{len(runs)}",
        )
        if code:
            failed.append(_failure(arm_run, code))
            console.print(
                f"[red]arm {arm_run.arm.name} {arm_run.label} seed {arm_run.seed} failed[/red]; the other arms go on"
            )
        else:
            trained.append(arm_run)
    if dry_run:
        return 0
    runs = trained
    if not runs:
        console.print("[red]no arm trained[/red]; nothing to evaluate.")
        _print_failures(console, failed, config_path)
        return 1
    evaluator = Evaluator(config, base, console, pipeline.model.dtype)
    references = {seed: evaluator.reference(seed)[0] for seed in config.seeds}
    reference_scores = {
        seed: read_scores(evaluator.reference_dir(seed) / "samples.jsonl") for seed in config.seeds
    }
    results = [
        {
            "arm": arm_run.arm.name,
            "stage": arm_run.arm.stage,
            "setting": arm_run.setting,
            "seed": arm_run.seed,
            "directory": str(arm_run.directory),
            "metrics": evaluator.arm(arm_run),
            **training_record(arm_run),
        }
        for arm_run in runs
    ]
    for result, arm_run in zip(
        results, runs, strict=True
    ):  # every per-prompt score, for the paired statistics
        result["scores"] = read_scores(arm_run.directory / "eval" / "samples.jsonl")
    sft_training = training_record(ArmRun(ArmConfig("sft", "sft"), {}, 0, base))  # base/sft
    engine = {**evaluator.sampler.record, "device": str(evaluator.sampler.device)}
    summary = report.write(
        output,
        config=dataclasses.asdict(config),
        group=group,
        reference={
            "metrics": references,
            "scores": reference_scores,
            **{k: sft_training[k] for k in ("wall_time_s", "num_tokens")},
        },
        results=results,
        tracking=(pipeline.tracking.mode, pipeline.tracking.project),
        failed=failed,
        provenance=provenance(config, config_path, overrides, runs, base, engine),
        prompts=[{"index": i, "id": row.get("id")} for i, row in enumerate(evaluator.rows)],
    )
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a log file: the whole table on one line per arm
    console.print(summary["table"])
    console.print(f"wrote {output / 'report.md'}")
    _print_failures(console, failed, config_path)
    return 1 if failed else 0


def _failure(arm_run: ArmRun, code: int) -> dict[str, Any]:
    """What the report says of an arm whose stage failed: which run, and the exception that ended its log."""
    from alignment import pipeline as pipeline_runner

    log = arm_run.directory / "logs" / f"{arm_run.arm.stage}.log"
    reason = pipeline_runner.stage_exception(pipeline_runner.log_lines(log))
    return {
        "arm": arm_run.arm.name,
        "setting": arm_run.setting,
        "label": arm_run.label,
        "seed": arm_run.seed,
        "log": str(log),
        "reason": reason or f"exit {code}; see the log",
    }


def _print_failures(console: Any, failed: list[dict[str, Any]], config_path: str | Path) -> None:
    for item in failed:
        console.print(f"[red]arm {item['arm']} {item['label']} seed {item['seed']} did not train[/red]:")
        console.print(f"    {item['reason']} (log: {item['log']})", markup=False, highlight=False)
    if failed:
        console.print(
            f"re-run the comparison to retry them (finished arms are reused): alignment compare {config_path}"
        )
