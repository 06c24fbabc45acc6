"""Typed configuration: dataclasses are the schema, YAML supplies values, `key=value` overrides win.

A pipeline YAML has shared sections (`model`, `tracking`, `accelerate_config`, ...) and one section per stage
(`sft:`, later `reward:`, `dpo:`, `ppo:`). A stage section holds every field of the TRL config class the stage
extends (so every TRL / transformers knob stays reachable) plus the project's own fields (`data`, `eval_data`,
`model` override).

Unknown keys and values of the wrong type are errors that name the key path, e.g. `sft.learnin_rate`
(did you mean `learning_rate`?). The resolved configuration is saved with every artifact and hashed; the hash
decides whether a stage may resume from a checkpoint or reuse a finished artifact.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alignment.data import DataConfig
from alignment.generation import GenerationConfig


class ConfigError(ValueError):
    """A configuration problem, with the file and key path that caused it and what to do."""


# --------------------------------------------------------------------------------------------- shared sections
@dataclass
class TuningConfig:
    """How much of the model trains. One field, the same for every stage."""

    method: Literal["full", "freeze", "lora", "qlora", "prompt_tuning", "ia3"] = "full"
    """full: all weights; freeze: only the last `trainable_last_n_blocks` blocks and the head (classic transfer
    learning); lora / qlora (4-bit base, needs CUDA + bitsandbytes); prompt_tuning (PEFT soft prompts); ia3."""
    trainable_last_n_blocks: int = 2
    """freeze only: number of final transformer blocks left trainable (plus final norm and LM/score head)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    """lora / qlora / ia3: module names (or `all-linear`) that get adapters."""
    num_virtual_tokens: int = 16
    """prompt_tuning only: length of the learned soft prompt."""
    merge_on_publish: bool = False
    """lora / ia3: publish merged full weights instead of the adapter (the adapter is always kept in checkpoints)."""


@dataclass
class ModelConfig:
    """Which model a stage starts from."""

    name_or_path: str = "smollm2-135m-instruct"
    """An embedded name (`alignment models list`), a local directory, or a hub id (needs network)."""
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bf16 where the device has bf16 units (alignment.precision): on a GPU with bf16, bf16 weights and compute;
    on a CPU with AMX or AVX512-BF16, fp32 master weights trained under bf16 autocast, and bf16 frozen models
    (reference, RM) and evaluation; float32 elsewhere. A named dtype is used as it is (tests that compare losses
    to 1e-5 name float32)."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust the repository."""
    attn_implementation: str | None = None
    chat_template: str | None = None
    """Path to a Jinja chat template. Default: the tokenizer's own; ChatML for tokenizers without one."""
    tuning: TuningConfig = field(default_factory=TuningConfig)


@dataclass
class TrackingConfig:
    """Weights & Biases: one run per stage, one group per pipeline run."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when WANDB_API_KEY is set (or WANDB_MODE says so), offline otherwise."""
    project: str = "alignment"
    entity: str | None = None
    group: str | None = None
    """W&B group; default: the pipeline run id (`<name>-<config hash>`)."""
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = True
    """Log the data snapshot as a dataset artifact and the output as a model artifact (by reference)."""


@dataclass
class GoldEvalConfig:
    """End-of-run check printed by `alignment run`: gold score of each policy on the same held-out prompts."""

    data: DataConfig = field(
        default_factory=lambda: DataConfig(source="builtin:tasks", seed=1234, task_count=64)
    )
    """Prompt rows with a `gold` checker; use a seed other than the training data's for held-out tasks."""
    policies: list[str] = field(default_factory=lambda: ["sft", "dpo"])
    """Stages whose artifacts are evaluated (those not run by the pipeline are left out)."""
    max_new_tokens: int = 48
    batch_size: int = 16
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """The engine that samples the policies (`alignment.generation`; `auto` takes vLLM where it is installed).
    They load in `model.dtype` (`auto`: bf16 where the device has bf16 units) on the accelerator."""


# ------------------------------------------------------------------------------------------------ stage sections
class StageArgsMixin:
    """Makes TRL configs with nested project dataclasses serialisable (W&B config, JSON)."""

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        out = super().to_dict()  # type: ignore[misc]
        for key, value in out.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                out[key] = dataclasses.asdict(value)
        return out


def _stage_config_classes() -> dict[str, type]:
    """Stage name -> its config class. Imported lazily: TRL import costs seconds."""
    from alignment import stage_configs

    return stage_configs.STAGE_CONFIGS


STAGES = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")


@dataclass
class PipelineConfig:
    """One self-contained experiment: shared sections plus one section per stage."""

    name: str = "run"
    output_dir: str = ""
    """Default: runs/<name>. Each stage publishes to <output_dir>/<stage>."""
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    accelerate_config: str = "configs/accelerate/cpu.yaml"
    """Distribution settings only (never hyperparameters): configs/accelerate/*.yaml."""
    stages: list[str] = field(default_factory=lambda: ["sft"])
    """Stages `alignment run` executes, in order."""
    evaluation: GoldEvalConfig | None = None
    """Optional gold-score check of the policies at the end of `alignment run`."""
    stage_sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Raw, validated stage sections (explicit keys only); turned into TRL configs by `stage_args`."""
    source_path: str | None = None

    def stage_output_dir(self, stage: str) -> Path:
        return Path(self.output_dir) / stage

    def resolved(self) -> dict[str, Any]:
        """The whole configuration as plain data: what `resolved_config.yaml` holds and the hash covers."""
        out: dict[str, Any] = {
            "name": self.name,
            "output_dir": self.output_dir,
            "seed": self.seed,
            "model": dataclasses.asdict(self.model),
            "tracking": dataclasses.asdict(self.tracking),
            "accelerate_config": self.accelerate_config,
            "stages": list(self.stages),
        }
        if self.evaluation is not None:
            out["evaluation"] = dataclasses.asdict(self.evaluation)
        for stage, section in self.stage_sections.items():
            out[stage] = _plain(section)
        return out


# Fields that change where or how loudly a stage runs, never what it computes. Excluded from the hash so that a
# moved output directory or a different logging cadence still reuses finished work.
NON_SEMANTIC_KEYS = frozenset(
    {
        "output_dir",
        "tracking",
        "accelerate_config",
        "stages",
        "evaluation",
        "logging_steps",
        "logging_first_step",
        "report_to",
        "run_name",
        "disable_tqdm",
        "save_total_limit",
        "dataloader_num_workers",
        "source_path",
        "cache_critic_trunk",
        "fold_adapter_for_generation",
        "padding_free",
    }
)


def config_hash(pipeline: PipelineConfig, stage: str) -> str:
    """Hash of what decides a stage's result: shared model/seed plus the stage's own section."""
    resolved = pipeline.resolved()
    relevant = {
        "model": resolved["model"],
        "seed": resolved["seed"],
        "stage": stage,
        stage: _strip(resolved.get(stage, {})),
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _strip(section: Any) -> Any:
    if isinstance(section, dict):
        return {k: _strip(v) for k, v in section.items() if k not in NON_SEMANTIC_KEYS}
    return section


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


# ------------------------------------------------------------------------------------------------------ loading
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the environment; an unset variable without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set (used as ${{{name}}}); set it or give a default"
        )

    return _ENV_PATTERN.sub(replace, text)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` -> {"a": {"b": 1}}; values are parsed as YAML (numbers, booleans, lists, null)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. sft.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error})") from error
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply `key=value` overrides, validate every key and type."""
    raw = read_yaml(path) if path is not None else {}
    raw = deep_merge(raw, parse_overrides(overrides or []))
    where = str(path) if path is not None else "<overrides>"
    return pipeline_from_dict(raw, where)


def pipeline_from_dict(raw: dict[str, Any], where: str = "<dict>") -> PipelineConfig:
    raw = expand_tree(raw, where)
    stage_classes = _stage_config_classes()
    stage_sections: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in raw.items():
        if key in STAGES:
            if key not in stage_classes:
                raise ConfigError(
                    f"{where}: stage {key!r} is not available in this version (available: {sorted(stage_classes)})"
                )
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping")
            stage_sections[key] = _validate_stage_section(stage_classes[key], value, where, key)
        else:
            shared[key] = value
    shared.pop("stage_sections", None)
    pipeline = coerce(PipelineConfig, shared, where, "")
    pipeline.stage_sections = stage_sections
    for stage in pipeline.stages:
        if stage not in STAGES:
            raise ConfigError(f"{where}: stages lists unknown stage {stage!r}; known: {list(STAGES)}")
    if not pipeline.output_dir:
        pipeline.output_dir = str(Path("runs") / pipeline.name)
    pipeline.source_path = where
    return pipeline


def _validate_stage_section(cls: type, section: dict[str, Any], where: str, stage: str) -> dict[str, Any]:
    hints = _type_hints(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    validated: dict[str, Any] = {}
    for key, value in section.items():
        if key not in init_fields:
            raise ConfigError(_unknown_key_message(where, f"{stage}.{key}", key, init_fields))
        validated[key] = _coerce_value(hints.get(key, Any), value, where, f"{stage}.{key}")
    return validated


def stage_args(pipeline: PipelineConfig, stage: str, **runtime: Any) -> Any:
    """Build the stage's TRL config object from the pipeline (explicit keys + runtime values such as paths)."""
    cls = _stage_config_classes()[stage]
    section = dict(pipeline.stage_sections.get(stage, {}))
    section.setdefault("seed", pipeline.seed)
    for key, value in runtime.items():
        section.setdefault(key, value)
    try:
        return cls(**section)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{pipeline.source_path}: section {stage!r} is inconsistent: {error}") from error


# -------------------------------------------------------------------------------------------- type coercion
def coerce(cls: type, data: Any, where: str, path: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type; errors name `where` and the key path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in init_fields:
            raise ConfigError(_unknown_key_message(where, key_path, key, init_fields))
        kwargs[key] = _coerce_value(hints.get(key, Any), value, where, key_path)
    return cls(**kwargs)


def _unknown_key_message(where: str, key_path: str, key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key_path!r}{hint}"


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a third-party annotation we cannot resolve: fall back to no checking
        return {f.name: Any for f in dataclasses.fields(cls)}


def _coerce_value(hint: Any, value: Any, where: str, path: str) -> Any:
    ok, result = _try_coerce(hint, value, where, path)
    if ok:
        return result
    raise ConfigError(f"{where}: {path} = {value!r} has the wrong type; expected {_describe(hint)}")


def _try_coerce(hint: Any, value: Any, where: str, path: str) -> tuple[bool, Any]:
    if hint is Any or hint is object:
        return True, value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (type(None) in args), None
        if isinstance(value, str) and str in args:  # a plain string where a string is allowed stays one
            return True, value
        for arg in sorted(args, key=_union_order):
            if arg is type(None):
                continue
            ok, result = _try_coerce(arg, value, where, path)
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        return (value in args), value
    if value is None:
        return False, None
    if dataclasses.is_dataclass(hint):
        return True, coerce(hint, value, where, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return True, hint(value).value if isinstance(value, str) else hint(value)
        except ValueError:
            return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        return False, None
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        inner = args[0] if args else Any
        if isinstance(value, str) and inner is str:  # `loss_type: ipo` means [ipo]
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, None
        items = [_coerce_value(inner, item, where, f"{path}[{i}]") for i, item in enumerate(value)]
        return True, items
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # a type we do not check (callables, torch dtypes): the consumer validates it


def _union_order(arg: Any) -> int:
    # Try strict scalar types before str so "3" stays a str only when int is not an option.
    order = {bool: 0, int: 1, float: 2}
    return order.get(arg, 3)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))


def expand_tree(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return expand_env(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
    if isinstance(value, dict):
        return {k: expand_tree(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_tree(v, where) for v in value]
    return value


def save_resolved(pipeline: PipelineConfig, directory: str | Path) -> Path:
    """Write `resolved_config.yaml`: loadable again with `load_pipeline`."""
    path = Path(directory) / "resolved_config.yaml"
    path.write_text(yaml.safe_dump(pipeline.resolved(), sort_keys=False))
    return path
