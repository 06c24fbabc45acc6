"""Read the records of an offline W&B run file (`wandb/offline-run-*/run-*.wandb`) back, for assertions.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records,
each with a 7-byte header (crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST) and a protobuf `Record`.
wandb 0.31 no longer ships a Python reader (the reader moved into its Go core), hence this small one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        space = BLOCK - offset % BLOCK
        if space < HEADER:  # block trailer padding
            offset += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        payload = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def summarise(path: str | Path) -> dict[str, object]:
    """History keys with their values, artifacts (name, type, metadata JSON), and the run's group/job_type."""
    history: dict[str, list[str]] = {}
    artifacts: list[tuple[str, str, str]] = []
    run: dict[str, str] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(item.value_json)
        elif kind == "artifact":
            artifacts.append((record.artifact.name, record.artifact.type, record.artifact.metadata))
        elif kind == "run":
            run = {"group": record.run.run_group, "job_type": record.run.job_type, "id": record.run.run_id}
    return {"history": history, "artifacts": artifacts, "run": run}


def find_run_files(root: str | Path) -> list[Path]:
    return sorted(Path(root).glob("**/offline-run-*/run-*.wandb"))
