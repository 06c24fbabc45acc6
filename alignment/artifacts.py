"""Artifact directories: atomic publish, completeness, checkpoints, inputs.

An artifact is a directory holding the model (safetensors), tokenizer, `resolved_config.yaml`, `metrics.json`
and `MANIFEST.json`. The manifest is written last, into a staging directory beside the target, which is then
renamed into place: a reader either sees a complete artifact or none. A directory without MANIFEST.json is
incomplete and never consumed.

Checkpoints of a running stage live in `<output_dir>/.work/<stage>/checkpoint-<step>`; each gets a `COMPLETE`
marker once every rank has finished writing it, so a kill mid-save never leaves a checkpoint that looks usable.
Before a marker or a manifest is written, every file it vouches for is fsynced, and after each rename the parent
folder is, so that a power loss cannot leave a marker (or a manifest) on disk ahead of the data it names. What a
kill leaves behind (a checkpoint without its marker, a staging or retired folder) is removed by
`clean_interrupted` before the stage resumes.

Fault injection (tests and `python -m bench faults`): `ALIGNMENT_FAULT_AT=<point>[:<step>]` sends SIGKILL to the
process when it reaches that point (see FAULT_POINTS).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
CHECKPOINT_MARKER = "COMPLETE"
MANIFEST_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or inconsistent with what the caller needs."""


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON's null: "not defined"), recursively, so
    that it can be written with `allow_nan=False` as standard JSON. A metric that is undefined by nature (a rank
    correlation of constant scores) becomes null; training values never get here non-finite (the guards stop
    the stage first)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def is_complete(path: str | Path) -> bool:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return True


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_complete(path):
        raise ArtifactError(
            f"{path} is not a complete artifact (no valid {MANIFEST}); re-run the stage that produces it"
        )
    return json.loads((path / MANIFEST).read_text())


def manifest_hash(path: str | Path) -> str:
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()[:16]


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (the names renamed or created in it), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up (itself last)."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        for name in dirs:
            fsync_path(Path(root) / name)
    fsync_path(folder)


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as JSON at `path`: written to a temporary file, fsynced, renamed over `path`, folder fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(json_safe(data), handle, indent=2, sort_keys=True, default=str, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def publish(staging: str | Path, final: str | Path, manifest: dict[str, Any]) -> Path:
    """Write MANIFEST.json last into `staging`, then rename `staging` to `final` (replacing an old one).

    Every file of `staging` is on disk before the manifest that vouches for it, and the parent folder is fsynced
    after the rename. A kill between the two renames of a replacement leaves no `final` and a retired folder,
    which `clean_interrupted` removes; the stage then publishes again."""
    staging, final = Path(staging), Path(final)
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest}
    fsync_tree(staging)
    write_json_atomic(staging / MANIFEST, manifest)
    fault_point("publishing")
    if final.exists():
        retired = final.parent / f".{final.name}.retired-{int(time.time() * 1000)}"
        os.replace(final, retired)
        os.replace(staging, final)
        fsync_path(final.parent)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
        fsync_path(final.parent)
    return final


def input_record(path: str | Path) -> dict[str, str]:
    """How a stage names an upstream artifact in its manifest: path + the hash of that artifact's manifest."""
    path = Path(path)
    return {"path": str(path.resolve()), "manifest_hash": manifest_hash(path)}


# ------------------------------------------------------------------------------------------------ checkpoints
FAULT_ENV = "ALIGNMENT_FAULT_AT"
FAULT_POINTS = {
    "data": "the stage's data snapshot is written (data preparation done)",
    "checkpoint-written": "every rank wrote checkpoint-<step>, before its COMPLETE marker (a kill mid-save)",
    "checkpoint": "checkpoint-<step> is COMPLETE",
    "staged": "the weights, configs and metrics are in the staging folder, before MANIFEST.json",
    "publishing": "MANIFEST.json is in the staging folder, before the rename into place",
}
"""Where `ALIGNMENT_FAULT_AT=<point>[:<step>]` kills the process (SIGKILL, as the OOM killer or a preempted node
would): a point with a step (`checkpoint:4`) fires at that step only, one without at its first passage."""


def fault_point(point: str, step: int | None = None) -> None:
    """SIGKILL this process when ALIGNMENT_FAULT_AT names `point` (and `step`, when it gives one)."""
    wanted = os.environ.get(FAULT_ENV, "")
    if not wanted:
        return
    name, _, wanted_step = wanted.partition(":")
    if name not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={wanted!r}: unknown point {name!r}; one of {', '.join(FAULT_POINTS)}")
    if name != point or (wanted_step and step is not None and int(wanted_step) != step):
        return
    import logging
    import sys

    logging.getLogger("alignment").warning("%s=%s: killing this process (SIGKILL)", FAULT_ENV, wanted)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def mark_checkpoint_complete(checkpoint: str | Path) -> None:
    """The COMPLETE marker, written once every file of `checkpoint` is on disk, then the folder fsynced."""
    checkpoint = Path(checkpoint)
    fsync_tree(checkpoint)
    with open(checkpoint / CHECKPOINT_MARKER, "w") as handle:
        handle.write(f"{time.time()}\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(checkpoint)


def complete_checkpoints(work_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-<N>` holding the COMPLETE marker, by step."""
    work_dir = Path(work_dir)
    found = []
    for child in work_dir.glob("checkpoint-*") if work_dir.is_dir() else ():
        step = child.name.split("-", 1)[1]
        if step.isdigit() and (child / CHECKPOINT_MARKER).is_file():
            found.append((int(step), child))
    return sorted(found)


def latest_complete_checkpoint(work_dir: str | Path) -> Path | None:
    """Highest-step `checkpoint-<N>` holding the COMPLETE marker, or None."""
    found = complete_checkpoints(work_dir)
    return found[-1][1] if found else None


def clean_interrupted(work_dir: str | Path, final: str | Path) -> list[Path]:
    """Remove what a killed run of a stage left: checkpoints without their COMPLETE marker in `work_dir`, and the
    staging or retired folders beside its artifact `final`. Returns what was removed. Main process only."""
    work_dir, final = Path(work_dir), Path(final)
    leftovers = [
        child
        for child in (work_dir.glob("checkpoint-*") if work_dir.is_dir() else ())
        if child.is_dir() and not (child / CHECKPOINT_MARKER).is_file()
    ]
    if final.parent.is_dir():
        leftovers += [
            child
            for pattern in (f".{final.name}.staging*", f".{final.name}.retired-*")
            for child in final.parent.glob(pattern)
        ]
    for leftover in leftovers:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return leftovers


def _git(*args: str) -> subprocess.CompletedProcess | None:
    """`git ARGS` in the code's checkout; None when git cannot run."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> str:
    from alignment import __version__

    result = _git("rev-parse", "--short", "HEAD")
    sha = result.stdout.strip() if result is not None and result.returncode == 0 else ""
    return f"{__version__}+{sha}" if sha else __version__


def uncommitted_changes() -> bool | None:
    """Whether tracked files of the code's git checkout differ from its commit (None outside a checkout)."""
    result = _git("status", "--porcelain", "--untracked-files=no")
    return bool(result.stdout.strip()) if result is not None and result.returncode == 0 else None
