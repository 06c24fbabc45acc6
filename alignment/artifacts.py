"""Artifact directories: atomic publish, completeness, checkpoints, lineage.

An artifact is a directory holding the model (safetensors), tokenizer, `resolved_config.yaml`, `metrics.json`
and `MANIFEST.json`. The manifest is written last, into a staging directory beside the target, which is then
renamed into place: a reader either sees a complete artifact or none. A directory without MANIFEST.json is
incomplete and never consumed.

Checkpoints of a running stage live in `<output_dir>/.work/<stage>/checkpoint-<step>`; each gets a `COMPLETE`
marker once every rank has finished writing it, so a kill mid-save never leaves a checkpoint that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from alignment.finite import json_safe

MANIFEST = "MANIFEST.json"
CHECKPOINT_MARKER = "COMPLETE"
MANIFEST_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or inconsistent with what the caller needs."""


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


def staging_dir(final: str | Path) -> Path:
    """A fresh staging directory beside `final` (same file system, so the publish rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.staging-{os.getpid()}-{int(time.time() * 1000)}"
    staging.mkdir()
    return staging


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(json_safe(data), handle, indent=2, sort_keys=True, default=str, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def publish(staging: str | Path, final: str | Path, manifest: dict[str, Any]) -> Path:
    """Write MANIFEST.json last into `staging`, then rename `staging` to `final` (replacing an old one)."""
    staging, final = Path(staging), Path(final)
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest}
    write_json_atomic(staging / MANIFEST, manifest)
    if final.exists():
        retired = final.parent / f".{final.name}.retired-{int(time.time() * 1000)}"
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


def input_record(path: str | Path) -> dict[str, str]:
    """How a stage names an upstream artifact in its manifest: path + the hash of that artifact's manifest."""
    path = Path(path)
    return {"path": str(path.resolve()), "manifest_hash": manifest_hash(path)}


def lineage(path: str | Path) -> list[dict[str, Any]]:
    """The chain of artifacts that produced `path`, itself first, following manifest inputs."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier = [Path(path)]
    while frontier:
        current = frontier.pop(0)
        key = str(current.resolve())
        if key in seen or not is_complete(current):
            continue
        seen.add(key)
        manifest = read_manifest(current)
        chain.append(
            {"path": key, "stage": manifest.get("stage"), "config_hash": manifest.get("config_hash")}
        )
        frontier.extend(Path(item["path"]) for item in manifest.get("inputs", {}).values())
    return chain


# ------------------------------------------------------------------------------------------------ checkpoints
FAULT_ENV = "ALIGNMENT_FAULT_AFTER_CHECKPOINT"
"""Testing hook: after the checkpoint of this step is complete, the process exits as if killed (137)."""


def exit_if_fault_injected(step: int) -> None:
    """Exit with 137 (as if killed) when FAULT_ENV names this step; called once a checkpoint is COMPLETE."""
    import logging
    import sys

    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    if fault_step and step == fault_step:
        logging.getLogger("alignment").warning("%s=%d: exiting as if killed", FAULT_ENV, fault_step)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


def mark_checkpoint_complete(checkpoint: str | Path) -> None:
    (Path(checkpoint) / CHECKPOINT_MARKER).write_text(f"{time.time()}\n")


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


def code_version() -> str:
    from alignment import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
