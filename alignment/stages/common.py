"""What every stage does around its trainer: arguments, data snapshot, W&B, checkpoints, atomic publish.

A stage file reads top to bottom as init -> data -> model -> train -> publish and calls into this module for
the plumbing, so the plumbing is written (and tested) once.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from alignment import artifacts
from alignment.artifacts import ArtifactError
from alignment.config import (
    ConfigError,
    PipelineConfig,
    config_hash,
    load_pipeline,
    save_resolved,
    stage_args,
)
from alignment.data import DataConfig, DataError, load_checked, split_train_eval, write_jsonl
from alignment.finite import guard_callback, json_safe
from alignment.models import load_tokenizer, resolve_model_path
from alignment.precision import precision_record, training_precision
from alignment.tracking import StageTracker, report_to

logger = logging.getLogger("alignment")


def parse_args(stage: str, argv: list[str] | None) -> tuple[PipelineConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog=f"alignment stage {stage}",
        description=f"Run the {stage} stage of a pipeline config (alone, or under `accelerate launch`).",
    )
    parser.add_argument("--config", required=True, help="pipeline YAML (configs/pipelines/*.yaml)")
    parser.add_argument("--force", action="store_true", help="re-run even if a complete artifact exists")
    parser.add_argument(
        "--restart", action="store_true", help="discard checkpoints of an interrupted run instead of resuming"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.learning_rate=1e-4")
    args = parser.parse_args(argv)
    return load_pipeline(args.config, args.overrides), args


def stage_main(stage: str, train: Any, argv: list[str] | None) -> int:
    """What `python -m alignment.stages.<stage>` runs: arguments, logging, `train(pipeline, force, restart)`."""
    setup_logging()
    pipeline, args = parse_args(stage, argv)
    train(pipeline, force=args.force, restart=args.restart)
    return 0


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class StageRun:
    """One execution of one stage: paths, hash, process role and tracker."""

    pipeline: PipelineConfig
    stage: str
    force: bool = False
    restart: bool = False
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        from accelerate import PartialState

        # On a machine without CUDA the processes talk over gloo (MULTI_CPU). PartialState is a singleton: the
        # first construction decides, so it must say cpu here, before TrainingArguments builds its own.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.is_main = self.state.is_main_process
        self.hash = config_hash(self.pipeline, self.stage)
        self.output_dir = self.pipeline.stage_output_dir(self.stage)
        self.work_dir = Path(self.pipeline.output_dir) / ".work" / self.stage
        self.staging = self.output_dir.parent / f".{self.output_dir.name}.staging"
        self.tracker = StageTracker(self.pipeline, self.stage, self.hash, self.is_main)
        self.data_hashes: dict[str, str] = {}
        self.data_mixtures: dict[str, Any] = {}
        """Per data name, the composition of a mixture (alignment.data.LoadResult.composition)."""
        self.inputs: dict[str, dict[str, str]] = {}

    # ---------------------------------------------------------------------------------------------- lifecycle
    def already_complete(self) -> bool:
        """True when a complete artifact with this config hash exists (and --force was not given)."""
        if self.force or not artifacts.is_complete(self.output_dir):
            return False
        return artifacts.read_manifest(self.output_dir).get("config_hash") == self.hash

    def prepare_work_dir(self) -> str | None:
        """Create the work dir; return the checkpoint to resume from. Refuses to resume across config changes."""
        hash_file = self.work_dir / "CONFIG_HASH"
        # --force on a finished stage trains it again from the start: the work dir's checkpoints are the finished
        # run's (resuming from its last one would train nothing and publish the same weights again).
        fresh = self.restart or (self.force and artifacts.is_complete(self.output_dir))
        if self.is_main:
            if fresh and self.work_dir.exists():
                if not self.restart:
                    logger.info(
                        "[%s] --force: discarding the finished run's checkpoints in %s",
                        self.stage,
                        self.work_dir,
                    )
                shutil.rmtree(self.work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            for leftover in artifacts.clean_interrupted(self.work_dir, self.output_dir):
                logger.info("[%s] removed what an interrupted run left: %s", self.stage, leftover)
        self.state.wait_for_everyone()
        checkpoint = resumable_checkpoint(self.work_dir)
        if hash_file.is_file():
            previous = hash_file.read_text().strip()
            if previous != self.hash and checkpoint is not None:
                raise ConfigError(
                    f"{self.work_dir} holds checkpoints of this stage with a different configuration "
                    f"(hash {previous}, now {self.hash}). Resume with the original config, or pass --restart "
                    f"to discard them, or choose another output_dir."
                )
        self.state.wait_for_everyone()
        if self.is_main:
            hash_file.write_text(self.hash + "\n")
        return str(checkpoint) if checkpoint is not None else None

    def training_defaults(self) -> dict[str, Any]:
        """Runtime values a stage passes to its TRL config unless the YAML set them."""
        return {
            "output_dir": str(self.work_dir),
            "run_name": f"{self.stage}-{self.hash[:8]}",
            "report_to": report_to(self.pipeline),
            **device_defaults(self.pipeline.model.dtype),
        }

    # --------------------------------------------------------------------------------------------------- data
    def load_rows(
        self, data_cfg: DataConfig, kind: str, name: str, token_length: Any = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Load, validate (failing on too many rejects), split, snapshot to the work dir; (train, eval) rows."""
        try:
            result = load_checked(data_cfg, kind, token_length=token_length)
        except DataError as error:
            raise SystemExit(f"[{self.stage}] data {name!r} from {data_cfg.describe()}: {error}") from error
        if result.rejects:
            logger.warning(
                "%s: %d of %d rows rejected (within max_reject_fraction=%s); first: %s",
                data_cfg.describe(),
                len(result.rejects),
                result.total,
                data_cfg.max_reject_fraction,
                result.rejects[0],
            )
        train_rows, eval_rows = split_train_eval(result.rows, data_cfg.eval_fraction, data_cfg.seed)
        snapshot_dir = self.work_dir / "data"
        snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = snapshot_dir / f"{name}.jsonl"
        snapshot_hash = write_jsonl(train_rows, path) if self.is_main else ""
        if self.is_main:
            self.data_hashes[name] = snapshot_hash
            if result.mixture is not None:
                self.data_mixtures[name] = result.composition()
            if eval_rows:
                self.data_hashes[f"{name}_eval"] = write_jsonl(eval_rows, snapshot_dir / f"{name}_eval.jsonl")
            self.tracker.use_dataset(
                path,
                f"{self.pipeline.name}-{self.stage}-{name}",
                snapshot_hash,
                {
                    "source": data_cfg.describe(),
                    "format": result.format,
                    "rows": len(train_rows),
                    "rejected": len(result.rejects),
                    **({"mixture": result.composition()} if result.mixture is not None else {}),
                },
            )
        logger.info(
            "[%s] %s: %d train rows, %d eval rows (%s)",
            self.stage,
            name,
            len(train_rows),
            len(eval_rows),
            result.format,
        )
        artifacts.fault_point("data")
        return train_rows, eval_rows

    def load_train_eval(
        self, args: Any, kind: str, token_length: Any
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The stage's `data` (split by `eval_fraction`) and optional `eval_data`; rows over the trainer's
        max_length are rejected and reported, never truncated."""
        data_cfg = args.data
        if data_cfg.max_length is None and getattr(args, "max_length", None) is not None:
            data_cfg.max_length = args.max_length
        train_rows, eval_rows = self.load_rows(data_cfg, kind, "train", token_length)
        if args.eval_data is not None:
            if args.eval_data.max_length is None:
                args.eval_data.max_length = data_cfg.max_length
            eval_rows, _ = self.load_rows(args.eval_data, kind, "eval", token_length)
        if not train_rows:
            raise ConfigError(f"{self.stage}: no training rows from {data_cfg.describe()}")
        return train_rows, eval_rows

    # ------------------------------------------------------------------------------------------------ publish
    def publish(
        self, metrics: dict[str, Any], extra_files: dict[str, Any] | None = None, model_kind: str = "full"
    ) -> Path:
        """Main process: configs, metrics and MANIFEST.json into the staging dir, then rename into place."""
        self.state.wait_for_everyone()
        if self.is_main:
            save_resolved(self.pipeline, self.staging)
            for leftover in ("training_args.bin",):  # pickled by Trainer.save_model; never consumed
                (self.staging / leftover).unlink(missing_ok=True)
            artifacts.write_json_atomic(self.staging / "metrics.json", metrics)
            for name, content in (extra_files or {}).items():
                artifacts.write_json_atomic(self.staging / name, content)
            artifacts.fault_point("staged")
            manifest = {
                "stage": self.stage,
                "config_hash": self.hash,
                "inputs": self.inputs,
                "data": self.data_hashes,
                **({"data_mixture": self.data_mixtures} if self.data_mixtures else {}),
                "model_kind": model_kind,
                "code_version": artifacts.code_version(),
                "wandb_run_id": self.tracker.run_id,
                "wandb_group": self.tracker.run.group if self.tracker.run is not None else None,
                "world_size": self.state.num_processes,
                "precision": precision_record(
                    self.pipeline.model.dtype,
                    self.state.device,
                    # the reward stage loads its own (sequence-classification) model in the trained dtype
                    "full" if self.stage == "reward" else self.pipeline.model.tuning.method,
                ),
                "wall_time_s": round(time.time() - self.started, 2),
                "metrics": metrics,
            }
            artifacts.publish(self.staging, self.output_dir, manifest)
            self.tracker.log_model(
                self.output_dir,
                f"{self.pipeline.name}-{self.stage}",
                {"config_hash": self.hash, **_scalars(metrics)},
            )
            self.tracker.summary(_scalars(metrics))
        self.state.wait_for_everyone()
        return self.output_dir

    def add_input(self, name: str, path: str | Path) -> None:
        if not artifacts.is_complete(path):
            raise ArtifactError(f"input {name}: {path} is not a complete artifact (no MANIFEST.json)")
        self.inputs[name] = artifacts.input_record(path)
        self.tracker.use_model(path, f"{self.pipeline.name}-{name}")


def resumable_checkpoint(work_dir: Path) -> Path | None:
    """The latest COMPLETE checkpoint to resume from, passing over a finished run's last one: resumed at its final
    step, transformers' Trainer trains one step more than the run asked for (its loop checks the step count only
    after a step), so a run killed after its last checkpoint resumes from the one before and publishes what an
    uninterrupted run publishes."""
    for step, checkpoint in reversed(artifacts.complete_checkpoints(work_dir)):
        state_file = checkpoint / "trainer_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("max_steps", 0) > 0 and step >= state["max_steps"]:
                logger.info("resuming from before %s: it is the finished run's last step", checkpoint)
                continue
        return checkpoint
    return None


def device_defaults(dtype: str = "auto") -> dict[str, Any]:
    """The device part of `StageRun.training_defaults`: CPU without CUDA; bf16 autocast where `model.dtype` and the
    device call for it (alignment.precision.training_precision: a bf16 GPU, or `auto` on a CPU with bf16 units)."""
    return {
        "use_cpu": not torch.cuda.is_available(),
        "bf16": training_precision(dtype)[1],
        "save_only_model": False,
        "logging_nan_inf_filter": False,  # a NaN loss is logged as NaN (alignment.finite stops the stage on it)
    }


def resolve_init_model(
    pipeline: PipelineConfig, run: StageRun, init_from: str, override: Any, stage: str
) -> tuple[str, Any]:
    """Path of the model a stage after SFT starts from, and the ModelConfig that describes how to load and tune it.

    An adapter SFT artifact is merged into its base once (main process, before any ZeRO-3 context exists) so the
    stage trains (or puts its head) on the SFT weights.
    """
    model_cfg = override or pipeline.model
    if init_from == "model":
        return resolve_model_path(model_cfg.name_or_path), model_cfg
    source = pipeline.stage_output_dir("sft") if init_from == "sft" else Path(init_from)
    if not artifacts.is_complete(source):
        raise ConfigError(
            f"{stage}.init_from={init_from!r}: {source} is not a complete artifact. Run the SFT stage first "
            f"(alignment stage sft --config {pipeline.source_path}), or set {stage}.init_from: model"
        )
    run.add_input("sft" if init_from == "sft" else "init", source)
    return _loadable(run, source, "init_model"), model_cfg


def _loadable(run: StageRun, source: Path, name: str) -> str:
    """A policy artifact as a directory of whole weights: an adapter artifact is merged into its base once (main
    process, before any ZeRO-3 context exists) into the work dir's `name`."""
    if artifacts.read_manifest(source).get("model_kind") != "adapter":
        return str(source)
    merged = run.work_dir / name
    if run.is_main and not (merged / "config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(source).merge_and_unload()
        model.save_pretrained(merged, safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(merged)
    run.state.wait_for_everyone()
    return str(merged)


def resolve_reference(
    pipeline: PipelineConfig, run: StageRun, stage: str, reference_from: str | None
) -> str | None:
    """Path of a frozen reference other than the init model (`reference_from`), or None for the default (the init
    model itself: with LoRA the policy with its adapter disabled). Recorded as an input of the stage."""
    if reference_from is None:
        return None
    source = pipeline.stage_output_dir("sft") if reference_from == "sft" else Path(reference_from)
    if not artifacts.is_complete(source):
        raise ConfigError(
            f"{stage}.reference_from={reference_from!r}: {source} is not a complete artifact (a policy stage's "
            "output directory with MANIFEST.json)"
        )
    run.add_input("reference", source)
    return _loadable(run, source, "reference_model")


class StageStart(NamedTuple):
    """What a stage after SFT has before it builds its models."""

    resume_from: str | None
    init_path: str
    model_cfg: Any
    args: Any
    tokenizer: Any


def start_from_init(pipeline: PipelineConfig, run: StageRun, stage: str) -> StageStart:
    """The common start of the stages that begin from an upstream artifact (reward, dpo, ppo, grpo, rloo):
    work dir and resume point, init model (merged once if it is an adapter), the stage's config, tokenizer."""
    resume_from = run.prepare_work_dir()
    section = pipeline.stage_sections.get(stage, {})
    init_path, model_cfg = resolve_init_model(
        pipeline, run, section.get("init_from", "sft"), section.get("model"), stage
    )
    args = stage_args(pipeline, stage, **run.training_defaults())
    check_tuning(model_cfg, stage)
    return StageStart(resume_from, init_path, model_cfg, args, load_tokenizer(model_cfg, init_path))


def check_tuning(model_cfg: Any, stage: str) -> None:
    """Refuse, before any model is loaded, tuning a stage cannot use: soft prompts after SFT (no adapter-disabled
    reference, no sequence-classification head), or an adapter merge into ZeRO-3 shards at publish time."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    tuning = model_cfg.tuning
    if tuning.method == "prompt_tuning" and stage != "sft":
        raise ConfigError(f"{stage}: prompt_tuning is for SFT only; use lora, ia3, freeze or full")
    if tuning.merge_on_publish and tuning.method in ("lora", "ia3") and is_deepspeed_zero3_enabled():
        raise ConfigError(
            f"{stage}: merge_on_publish under ZeRO-3 would merge into sharded weights; publish the adapter "
            "(merge_on_publish: false) and merge it afterwards, or use ZeRO-2"
        )


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def stage_callbacks(run: StageRun) -> list[Any]:
    """What every TRL stage's trainer gets: COMPLETE markers on checkpoints, and a stop at the first non-finite
    loss or gradient norm (alignment.finite), and a progress event per logging step (alignment.progress)."""
    return [
        checkpoint_callback(run),
        guard_callback(run.stage, run.work_dir, run.is_main),
        progress_callback(),
    ]


def progress_callback() -> Any:
    """Appends step / total, loss, reward and KL to the pipeline's progress file at each log (main process only)."""
    from transformers import TrainerCallback

    from alignment import progress

    class ProgressEvents(TrainerCallback):
        started: float | None = None
        start_step = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if (
                self.started is None
            ):  # the first step of this process: after a resume, global_step is restored
                self.started, self.start_step = time.time(), state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            if not state.is_world_process_zero or "loss" not in logs and "reward" not in logs:
                return  # the final summary (train_loss, train_runtime) and eval logs are no steps
            progress.emit(
                state.global_step,
                state.max_steps,
                time.time() - (self.started or time.time()),
                start_step=self.start_step,
                loss=logs.get("loss"),
                reward=logs.get("reward"),
                kl=logs.get("kl", logs.get("objective/kl")),
            )

    return ProgressEvents()


def checkpoint_callback(run: StageRun) -> Any:
    """Marks each checkpoint COMPLETE after every rank wrote it (fault points around it: artifacts.FAULT_POINTS)."""
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            run.state.wait_for_everyone()
            artifacts.fault_point("checkpoint-written", state.global_step)
            if run.is_main and checkpoint.is_dir():
                artifacts.mark_checkpoint_complete(checkpoint)
            run.state.wait_for_everyone()
            artifacts.fault_point("checkpoint", state.global_step)

    return CompleteCheckpoints()


def execute(
    pipeline: PipelineConfig,
    stage: str,
    build: Any,
    finish: Any,
    force: bool = False,
    restart: bool = False,
) -> Path:
    """The lifecycle every trainer stage shares: skip if complete, W&B run, build, train (resuming), evaluate,
    save, publish. `build(pipeline, run) -> (trainer, checkpoint or None)`; `finish(trainer, run, metrics)` saves
    the weights into `run.staging` (on every rank) and returns (model_kind, extra JSON files)."""
    from alignment.progress import quiet_library_noise

    quiet_library_noise()
    run = StageRun(pipeline, stage, force=force, restart=restart)
    if run.already_complete():
        if run.is_main:
            print(
                f"[{stage}] complete artifact with the same config exists: {run.output_dir} (use --force to re-run)"
            )
        return run.output_dir
    run.tracker.start(pipeline.resolved())
    exit_code = 1
    try:
        trainer, resume_from = build(pipeline, run)
        if resume_from:
            logger.info("[%s] resuming from %s", stage, resume_from)
        result = trainer.train(resume_from_checkpoint=resume_from)
        metrics: dict[str, Any] = {
            "train_loss": result.training_loss,
            "global_step": result.global_step,
            **{k: v for k, v in result.metrics.items() if k != "total_flos"},
        }
        if (
            resume_from
        ):  # transformers averages over this process's steps only; the artifact is the whole run's
            whole = whole_run_train_loss(trainer.state.log_history, result.global_step)
            if whole is not None:
                metrics["train_loss"] = whole
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        model_kind, extra_files = finish(trainer, run, metrics)
        if run.is_main:
            write_log_history(run.staging / "log_history.json", trainer.state.log_history)
        path = run.publish(metrics, extra_files, model_kind)
        report_done(run, path, metrics)
        exit_code = 0
        return path
    finally:
        run.tracker.finish(exit_code)


def whole_run_train_loss(log_history: list[dict[str, Any]], global_step: int) -> float | None:
    """The mean training loss over every step of a run from its logged losses (each the mean over the steps since
    the previous log), or None when the logs do not reach `global_step`."""
    total, previous = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous and previous == global_step else None


def save_policy_weights(trainer: Any, run: StageRun, model_cfg: Any, policy: Any = None) -> str:
    """Every rank saves (ZeRO-3 gathers shards); the main process then keeps the adapter or merges it as the
    config asks. `policy`: the published model when it is not the trainer's whole model (PPO's actor).
    Returns what was published: `full`, `adapter` or `merged`."""
    import peft

    trainer.save_model(str(run.staging))
    model = policy if policy is not None else trainer.accelerator.unwrap_model(trainer.model)
    kind = "full"
    if isinstance(model, peft.PeftModel):
        kind = "adapter"
        if model_cfg.tuning.merge_on_publish and model_cfg.tuning.method in ("lora", "ia3"):
            if run.is_main:
                merge_adapter(model, run.staging)
            kind = "merged"
    run.state.wait_for_everyone()
    return kind


def merge_adapter(model: Any, directory: Path) -> None:
    """Replace the adapter files a PEFT model saved in `directory` with its merged full weights."""
    merged = model.merge_and_unload()
    for leftover in ("adapter_model.safetensors", "adapter_config.json"):
        (directory / leftover).unlink(missing_ok=True)
    merged.save_pretrained(directory, safe_serialization=True)


def write_log_history(path: Path, log_history: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(json_safe(log_history), indent=1, allow_nan=False) + "\n")


def report_done(run: StageRun, path: Path, metrics: dict[str, Any]) -> None:
    if run.is_main:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if isinstance(v, (int, float))
        )
        print(f"[{run.stage}] artifact: {path}\n[{run.stage}] {shown}", flush=True)
