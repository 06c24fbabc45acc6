"""Typed configuration: dataclasses are the schema, YAML supplies values, `key=value` overrides win.

A pipeline YAML has shared sections (`model`, `tracking`, `accelerate_config`, ...) and one section per stage
(`sft:`, later `reward:`, `dpo:`, `ppo:`). A stage section holds every field of the TRL config class the stage
extends (so every TRL / transformers knob stays reachable) plus the project's own fields (`data`, `eval_data`,
`model` override).

Unknown keys and values of the wrong type are errors that name the key path, e.g. `sft.learnin_rate`
(did you mean `learning_rate`?). The resolved configuration is saved with every artifact and hashed; the hash
decides whether a stage may resume from a checkpoint or reuse a finished artifact.

Paths. A relative path written in a YAML file is relative to the folder of the file that names it, so a config
runs from any directory: `accelerate_config`, `model.name_or_path` and `model.chat_template` (in a stage's `model:`
too), every data `source:` that is a local file or folder (`data`, `eval_data`, `evaluation.data`, each
`mixture` entry of them), and in a
comparison YAML its `pipeline:`, the paths in its `pipeline_overrides` and `evaluation.prompts.source`. Two
exceptions are relative to the current directory wherever they are written: `output_dir` (runs land where they are
started, as with the alignment-handbook and torchtune, never inside an installed package) and paths to run
artifacts (`init_from`, `reference_from`, `reward_model`, `value_model`), which name what runs wrote under their
output_dir (`runs/quickstart/sft`). `key=value` overrides on the command line are relative to the current
directory. A value that starts with `${VAR}` is the environment's (relative: to the current directory); absolute
paths and `~` are unchanged. Not paths: embedded model names and hub ids, `builtin:`, `hub:` and `service:` data
sources, `rule:` / `mix:` reward specs and the keywords `sft`, `model`, `reward`, `auto`, `policy`.
`accelerate_config` and a comparison's `pipeline` also take the name of a shipped config (`cpu`, `quickstart`:
`alignment configs` lists them). Every path is absolute once loaded: the saved resolved config shows where each
one pointed, and the config hash, which covers data paths and artifact paths, is the same for the same files
whatever the directory a run starts from.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alignment.data import DataConfig
from alignment.generation import GenerationConfig

# The typed-YAML machinery and the model section live in alignment.schema (below the data layer, which uses them);
# they are this module's API too, as they always were.
from alignment.schema import (  # noqa: F401 - re-exported
    ConfigError,
    ModelConfig,
    TuningConfig,
    coerce,
    coerce_value,
    deep_merge,
    expand_env,
    expand_tree,
    parse_overrides,
    type_hints,
    unknown_key_message,
)


@dataclass
class TrackingConfig:
    """Weights & Biases: one run per stage, one group per pipeline run."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online whenever wandb has credentials (WANDB_API_KEY, or the netrc entry `wandb login` writes),
    offline otherwise; WANDB_MODE, when set, decides instead (alignment.tracking.decide_mode)."""
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
    """Default: runs/<name>, relative to the current directory (as every output_dir). Each stage publishes to
    <output_dir>/<stage>."""
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    accelerate_config: str = "cpu"
    """Distribution settings only (never hyperparameters): the name of a shipped one (`cpu`, `cpu_ddp`, `zero3`,
    ...: configs/accelerate/<name>.yaml) or a path to an accelerate YAML."""
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
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not _omitted_default(value, f)
        }
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _omitted_default(value: Any, field_: dataclasses.Field) -> bool:
    """A field added after configs were hashed (metadata `omit_when_default`, e.g. DataConfig.mixture) that still
    holds its default: left out, so configs written before it keep their hash."""
    if not field_.metadata.get("omit_when_default"):
        return False
    if field_.default is not dataclasses.MISSING:
        default = field_.default
    elif field_.default_factory is not dataclasses.MISSING:
        default = field_.default_factory()
    else:
        return False
    return getattr(value, field_.name) == default


# ------------------------------------------------------------------------------------------------------ loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A pipeline or comparison YAML, its relative paths made absolute from the file's folder (`anchor_paths`)."""
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
    return anchor_paths(data, Path(os.path.abspath(path)).parent, str(path))


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML (a path, or the name of a shipped one), apply `key=value` overrides (paths in them
    relative to the current directory), validate every key and type."""
    if path is not None:
        path = find_config(path, "pipelines")
    raw = read_yaml(path) if path is not None else {}
    raw = deep_merge(raw, anchor_paths(parse_overrides(overrides or []), Path.cwd(), "<command line>"))
    where = str(path) if path is not None else "<overrides>"
    return pipeline_from_dict(raw, where)


# ---------------------------------------------------------------------------------------------------- paths
# Where the relative paths of a config point: the rule is in this module's docstring. Key paths into the raw YAML
# (`*` is any stage section) -> what the value is. Comparison YAMLs (alignment.compare) are read by `read_yaml`
# too, so their fields are here as well; no pipeline field has their names.
_FILE_RELATIVE = {
    ("accelerate_config",): "accelerate",
    ("model", "name_or_path"): "model",
    ("model", "chat_template"): "file",
    ("evaluation", "data", "source"): "data",
    ("*", "data", "source"): "data",
    ("*", "eval_data", "source"): "data",
    ("*", "model", "name_or_path"): "model",
    ("*", "model", "chat_template"): "file",
    ("pipeline",): "pipeline",  # comparison YAML
    ("evaluation", "prompts", "source"): "data",  # comparison YAML
}
_CWD_RELATIVE = {
    ("output_dir",): "file",
    ("*", "init_from"): "artifact",
    ("*", "reference_from"): "artifact",
    ("*", "reward_model"): "reward",
    ("*", "value_model"): "artifact",
}
_KEYWORDS = {"sft", "model", "reward", "auto", "policy"}
"""Values of init_from / reference_from / reward_model / value_model that name something, not a path."""


def configs_dir() -> Path:
    """The shipped configs: the repository's `configs/` in a checkout, else where the package installed them
    (`<prefix>/share/alignment/configs`, pyproject.toml's data-files)."""
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "pipelines").is_dir():
        return checkout
    installed = Path(sysconfig.get_path("data")) / "share" / "alignment" / "configs"
    if (installed / "pipelines").is_dir():
        return installed
    raise ConfigError(
        f"the shipped configs are neither in {checkout} nor in {installed}; reinstall the package"
    )


def shipped_configs(kind: str) -> dict[str, tuple[Path, str]]:
    """Shipped configs of one kind (`pipelines`, `compare`, `accelerate`): name -> (path, the first sentence of
    its opening comment)."""
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted((configs_dir() / kind).glob("*.yaml")):
        found[path.stem] = (path, _description(path.read_text()))
    return found


def _description(text: str) -> str:
    """The first sentence of a YAML's opening comment (up to an indented command line)."""
    words = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line[1:].strip())
    return re.split(r"(?<=[.!?])\s", " ".join(words), maxsplit=1)[0]


def _is_name(value: str) -> bool:
    return "/" not in value and os.sep not in value and not value.lower().endswith((".yaml", ".yml"))


def find_config(name_or_path: str | Path, kind: str) -> Path:
    """A config named on the command line: a file (relative to the current directory), or the name of a shipped
    config of `kind` (`quickstart`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file() or not _is_name(str(name_or_path)):
        return path
    return shipped_config(str(name_or_path), kind)


def shipped_config(name: str, kind: str) -> Path:
    shipped = shipped_configs(kind)
    if name not in shipped:
        raise ConfigError(
            f"{name}: neither a file nor the name of a shipped {kind} config ({', '.join(shipped)}; "
            "`alignment configs` lists them)"
        )
    return shipped[name][0]


def anchor_paths(tree: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """A copy of a raw config tree whose relative paths are absolute: paths relative to the file from `base` (the
    file's folder; the current directory for command-line overrides), the others from the current directory.
    Values that are not paths (names, keywords, `${VAR}...`) are left as they are."""
    out = _copy_tree(tree)
    for fields, anchor in ((_FILE_RELATIVE, base), (_CWD_RELATIVE, Path.cwd())):
        for keys, kind in fields.items():
            for parent, key, dotted in _matches(out, keys):
                parent[key] = _anchor(parent[key], kind, anchor, where, dotted)
    for section, dotted in _data_sections(out):  # data.mixture[i].source: file-relative as data.source
        mixture = section.get("mixture")
        for index, entry in enumerate(mixture if isinstance(mixture, list) else []):
            if isinstance(entry, dict) and isinstance(entry.get("source"), str):
                where_key = f"{dotted}.mixture[{index}].source"
                entry["source"] = _anchor(entry["source"], "data", base, where, where_key)
    overrides = out.get("pipeline_overrides")
    if isinstance(overrides, list):  # comparison YAML: `key=value` overrides of its pipeline, written here
        out["pipeline_overrides"] = [_anchor_override(item, base, where) for item in overrides]
    return out


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _matches(tree: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[dict[str, Any], str, str]]:
    """(mapping, key, dotted key path) of each string value at a key path; `*` matches every stage section."""
    nodes: list[tuple[dict[str, Any], str]] = [(tree, "")]
    for key in keys[:-1]:
        names = STAGES if key == "*" else (key,)
        nodes = [
            (node[name], f"{prefix}{name}.")
            for node, prefix in nodes
            for name in names
            if isinstance(node.get(name), dict)
        ]
    last = keys[-1]
    return [(node, last, prefix + last) for node, prefix in nodes if isinstance(node.get(last), str)]


def _data_sections(tree: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(data section, dotted key path) of `evaluation.data` and every stage's `data` and `eval_data`."""
    found = []
    for stage, key in [("evaluation", "data")] + [(s, k) for s in STAGES for k in ("data", "eval_data")]:
        section = tree.get(stage)
        if isinstance(section, dict) and isinstance(section.get(key), dict):
            found.append((section[key], f"{stage}.{key}"))
    return found


def _anchor_override(item: Any, base: Path, where: str) -> Any:
    if not isinstance(item, str) or "=" not in item:
        return item
    key, raw = item.split("=", 1)
    anchored = anchor_paths(parse_overrides([item]), base, where)
    value = anchored
    for part in key.strip().split("."):
        value = value.get(part) if isinstance(value, dict) else None
    original = yaml.safe_load(raw) if raw else raw
    if isinstance(value, str) and value != original:
        return f"{key}={json.dumps(value)}"
    return item


def _anchor(value: str, kind: str, base: Path, where: str, field_name: str) -> str:
    if kind == "reward" and value.startswith("mix:"):  # mix:0.5*reward+0.5*runs/x/reward
        parts = []
        for part in value[len("mix:") :].split("+"):
            weight, star, spec = part.partition("*") if "*" in part else ("", "", part)
            parts.append(f"{weight}{star}{_anchor(spec, 'artifact', base, where, field_name)}")
        return "mix:" + "+".join(parts)
    if not _is_path(value, kind, base):
        return value
    if kind in ("accelerate", "pipeline") and _is_name(value) and not (base / value).is_file():
        try:
            return str(shipped_config(value, "accelerate" if kind == "accelerate" else "pipelines"))
        except ConfigError as error:
            raise ConfigError(f"{where}: {field_name}: {error}") from error
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    anchored = Path(os.path.normpath(base / path))
    cwd = Path.cwd()
    if not anchored.exists() and base != cwd and (cwd / path).exists():
        raise ConfigError(
            f"{where}: {field_name} {value} does not exist relative to the config file's folder ({anchored}), "
            f"only relative to the current directory ({cwd / path}). Relative paths in a config are relative to "
            "the file that names them: write the path from there, or an absolute path"
        )
    return str(anchored)


def _is_path(value: str, kind: str, base: Path) -> bool:
    """Whether a value of this kind is a path (else a name, keyword, spec or `${VAR}...`, left as it is)."""
    if not value or value.startswith("${"):
        return False
    if value.startswith(("/", "~", "./", "../")) or value in (".", ".."):
        return True
    if kind in ("file", "accelerate", "pipeline"):
        return True
    if kind in ("artifact", "reward"):
        return value not in _KEYWORDS and not value.startswith(("rule:", "mix:"))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value):  # builtin:tasks, hub:org/name, service:x@1
        return False
    if kind == "model":
        from alignment.models import EMBEDDED_MODELS

        return value not in EMBEDDED_MODELS and ((base / value).exists() or Path(value).exists())
    from alignment.data.sources import PATH_SUFFIXES  # kind == "data": what alignment.data reads as a path

    first, separator, _ = value.partition("/")
    return (
        value.lower().endswith(PATH_SUFFIXES)
        or (base / value).exists()
        or Path(value).exists()
        or bool(separator and ((base / first).exists() or Path(first).exists()))
    )


def pipeline_from_dict(raw: dict[str, Any], where: str = "<dict>") -> PipelineConfig:
    """A pipeline from a raw tree; relative paths left in it (given as a dict, or from `${VAR}`) are taken from
    the current directory."""
    raw = anchor_paths(expand_tree(raw, where), Path.cwd(), where)
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
    pipeline.output_dir = os.path.abspath(os.path.expanduser(pipeline.output_dir))
    pipeline.accelerate_config = _anchor(
        pipeline.accelerate_config, "accelerate", Path.cwd(), where, "accelerate_config"
    )
    pipeline.source_path = where
    return pipeline


def _validate_stage_section(cls: type, section: dict[str, Any], where: str, stage: str) -> dict[str, Any]:
    hints = type_hints(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    validated: dict[str, Any] = {}
    for key, value in section.items():
        if key not in init_fields:
            raise ConfigError(unknown_key_message(where, f"{stage}.{key}", key, init_fields))
        validated[key] = coerce_value(hints.get(key, Any), value, where, f"{stage}.{key}")
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


def save_resolved(pipeline: PipelineConfig, directory: str | Path) -> Path:
    """Write `resolved_config.yaml`: loadable again with `load_pipeline`."""
    path = Path(directory) / "resolved_config.yaml"
    path.write_text(yaml.safe_dump(pipeline.resolved(), sort_keys=False))
    return path
