"""Live stage progress: the stage process appends one JSON line per logging step, the parent renders it.

A stage's console output goes to OUTPUT/logs/<stage>.log; the pipeline names a progress file beside it
(OUTPUT/logs/<stage>.progress.jsonl) in `ALIGNMENT_PROGRESS_FILE`, the stage's main process appends an event per
logging step (`emit`), and the parent follows the file (`ProgressReader`) and shows one line per stage
(`render_line`): `[2/3] reward  step 6/8  loss 0.512  0:12 < 0:04`. A stage run alone (no variable) writes nothing.
Hand-written because the events cross a process boundary: tqdm and rich draw only in the process that owns them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "ALIGNMENT_PROGRESS_FILE"
SHOWN = ("loss", "reward", "kl")
"""The figures a progress line shows, in this order, when an event has them."""


def emit(
    step: int,
    total: int,
    elapsed: float,
    start_step: int = 0,
    path: str | Path | None = None,
    **figures: float | None,
) -> None:
    """Append one progress event to `path` (default: the file named by ALIGNMENT_PROGRESS_FILE; none: no-op).

    `elapsed`: seconds since this process started training at `start_step` (a resumed stage starts there, so the
    ETA divides by the steps this process ran). `figures`: loss, reward, kl, ... (None values are left out)."""
    target = path if path is not None else os.environ.get(ENV)
    if not target:
        return
    event: dict[str, Any] = {"step": int(step), "total": int(total), "elapsed": round(float(elapsed), 3)}
    if start_step:
        event["start_step"] = int(start_step)
    for key, value in figures.items():
        if value is not None:
            event[key] = round(float(value), 6)
    with open(target, "a") as handle:  # one write of one line: the reader never sees half an event
        handle.write(json.dumps(event) + "\n")


class ProgressReader:
    """Follows a progress file: `poll()` returns the events appended since the last call (complete lines only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.partial = ""

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path) as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        *lines, self.partial = (self.partial + text).split("\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not an event (a file written by something else): shown nowhere, kept in the file
        return events


def format_duration(seconds: float) -> str:
    """`0:12`, `3:05`, `1:02:03` (as rich and tqdm show times)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(event: dict[str, Any]) -> float | None:
    """Seconds left at the pace of the steps this process ran so far; None before the first step."""
    done = event["step"] - event.get("start_step", 0)
    if done <= 0 or not event.get("total"):
        return None
    return event["elapsed"] / done * max(0, event["total"] - event["step"])


def render_line(prefix: str, event: dict[str, Any]) -> str:
    """`[2/3] reward  step 6/8  loss 0.512  0:12 < 0:04`: step / total, the shown figures, elapsed < ETA."""
    parts = [prefix, f"step {event['step']}/{event['total']}"]
    parts += [f"{key} {event[key]:.3f}" for key in SHOWN if key in event]
    eta = eta_seconds(event)
    timing = format_duration(event["elapsed"])
    parts.append(timing + (f" < {format_duration(eta)}" if eta is not None else ""))
    return "  ".join(parts)


class PlainThrottle:
    """When a non-interactive console (CI, a log file) prints progress: at most one line per `interval` seconds,
    and the last event at the end (`flush`), so a fast stage does not print a line per step for minutes."""

    def __init__(self, interval: float = 10.0, clock: Any = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last_shown: float | None = None
        self.pending: dict[str, Any] | None = None

    def offer(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event to print now, or None (kept for `flush`)."""
        now = self.clock()
        if self.last_shown is None or now - self.last_shown >= self.interval:
            self.last_shown = now
            self.pending = None
            return event
        self.pending = event
        return None

    def flush(self) -> dict[str, Any] | None:
        pending, self.pending = self.pending, None
        return pending


LIBRARY_NOISE = ((FutureWarning, r".*`is_gradient_checkpointing` is deprecated"),)
"""Warnings that tell the user nothing (a library's own deprecated call), filtered by category and message."""


def quiet_library_noise(loading_bars: bool = False) -> None:
    """Filter LIBRARY_NOISE in this process; `loading_bars`: also hide transformers' own bars ("Loading weights"),
    for the processes whose console shows results (the pipeline's evaluation, compare, eval)."""
    import warnings

    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    if loading_bars:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
