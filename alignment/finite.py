"""Non-finite values stop a stage: nothing trained into NaN or infinity is ever published.

- Training (SFT, reward, DPO, GRPO, RLOO through TRL; PPO through its own loop): the first logged loss, gradient
  norm or evaluation loss that is NaN or infinite raises `NonFiniteError`, which names the step, the value, the
  last checkpoint taken while every value was finite, and what to change. The stage publishes nothing and exits
  non-zero. Checkpoints saved after the last finite values lose their COMPLETE marker, so a resume cannot start
  from weights that may already be poisoned.
- Transformers' `logging_nan_inf_filter` (on by default) would replace a NaN loss in the logged average by the
  others' mean, or by 0 when every step of the window is NaN: the stages turn it off, so what went wrong is what
  is logged.
- Publishing: `require_finite` refuses a reward model whose diagnostics or normalisation statistics are not
  finite, and every JSON file an artifact holds is written with `allow_nan=False` (`json_safe`: a metric that
  is undefined by nature is null, never the non-standard `NaN`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alignment import artifacts
from alignment.artifacts import json_safe  # noqa: F401 - where the stages and reward_models.check take it from

WATCHED = ("loss", "grad_norm", "eval_loss")
"""The logged values that must stay finite (TRL's names; PPO checks its own: ppo_trainer.PPO_WATCHED)."""

ADVICE = "lower the learning rate, clip gradients (max_grad_norm), or check the data for empty or broken rows"


class NonFiniteError(RuntimeError):
    """A stage met a NaN or infinite loss, gradient norm or metric; its message says where and what to do."""


def non_finite(values: Mapping[str, Any], names: Iterable[str] | None = None) -> dict[str, float]:
    """The entries of `values` (only `names`, if given) that are numbers but not finite."""
    keys = values.keys() if names is None else [n for n in names if n in values]
    found = {}
    for key in keys:
        value = values[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            found[key] = float(value)
    return found


def retire_checkpoints_after(work_dir: Path, step: int) -> tuple[Path | None, list[Path]]:
    """Removes the COMPLETE marker of every checkpoint after `step` (they may hold non-finite weights); returns
    (the latest complete checkpoint at or before `step`, the checkpoints retired)."""
    complete = artifacts.complete_checkpoints(work_dir)
    retired = [path for number, path in complete if number > step]
    for path in retired:
        (path / artifacts.CHECKPOINT_MARKER).unlink()
    kept = [path for number, path in complete if number <= step]
    return (kept[-1] if kept else None), retired


def failure_message(
    stage: str, step: int, bad: Mapping[str, float], last_finite_step: int, work_dir: Path, is_main: bool
) -> str:
    """What `NonFiniteError` says; on the main process, also retires the checkpoints that may be poisoned."""
    values = ", ".join(f"{name} = {value}" for name, value in bad.items())
    message = f"[{stage}] step {step}: {values}. Stopped; nothing was published."
    if is_main:
        good, retired = retire_checkpoints_after(work_dir, last_finite_step)
        if retired:
            message += (
                f" Checkpoints after step {last_finite_step} were set aside (no COMPLETE marker): "
                + ", ".join(p.name for p in retired)
                + "."
            )
        message += (
            f" Last checkpoint with finite values: {good}." if good else " No checkpoint was taken before it."
        )
    return f"{message} To fix: {ADVICE}."


def guard_callback(stage: str, work_dir: Path, is_main: bool) -> Any:
    """A TrainerCallback that raises `NonFiniteError` at the first logged non-finite loss, gradient norm or
    evaluation loss (every `logging_steps`; the stages log with `logging_nan_inf_filter` off)."""
    from transformers import TrainerCallback

    class NonFiniteGuard(TrainerCallback):
        last_finite_step = 0

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            bad = non_finite(logs or {}, WATCHED)
            if bad:
                raise NonFiniteError(
                    failure_message(stage, state.global_step, bad, self.last_finite_step, work_dir, is_main)
                )
            self.last_finite_step = state.global_step

    return NonFiniteGuard()


def require_finite(what: str, values: Mapping[str, Any], names: Iterable[str] | None = None) -> None:
    """Raises `NonFiniteError` naming `what` when any of `values` (or of `names`) is NaN or infinite; a named
    value that is missing or null (how `json_safe` writes a non-finite one) counts as not finite."""
    bad: dict[str, Any] = dict(non_finite(values, names))
    for name in names or ():
        if values.get(name) is None:
            bad[name] = None
    if bad:
        shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteError(f"{what}: {shown}. Nothing was published. To fix: {ADVICE}.")
