"""Typed configuration from YAML, below every section that uses it: dataclasses are the schema, values are checked.

`coerce(cls, tree, where, path)` builds a dataclass from a mapping, checking every key and type; an unknown key or
a value of the wrong type is a `ConfigError` naming the file and the key path (`sft.learnin_rate`: did you mean
`learning_rate`?). `${VAR}` / `${VAR:-default}` expand from the environment; `key=value` overrides parse as YAML.
Also the `model` section (ModelConfig, TuningConfig), which alignment.models, the stage configs and the pipeline
(alignment.config) all read. Nothing here imports the rest of the project: alignment.config, the data layer and
the service build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the file and key path that caused it and what to do."""


# --------------------------------------------------------------------------------------------- the model section
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


# ------------------------------------------------------------------------------------------ ${VAR}, overrides
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


# -------------------------------------------------------------------------------------------- type coercion
def coerce(cls: type, data: Any, where: str, path: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type; errors name `where` and the key path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = type_hints(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in init_fields:
            raise ConfigError(unknown_key_message(where, key_path, key, init_fields))
        kwargs[key] = coerce_value(hints.get(key, Any), value, where, key_path)
    return cls(**kwargs)


def unknown_key_message(where: str, key_path: str, key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key_path!r}{hint}"


def type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a third-party annotation we cannot resolve: fall back to no checking
        return {f.name: Any for f in dataclasses.fields(cls)}


def coerce_value(hint: Any, value: Any, where: str, path: str) -> Any:
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
        items = [coerce_value(inner, item, where, f"{path}[{i}]") for i, item in enumerate(value)]
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
