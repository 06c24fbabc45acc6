"""Reading records from where data lives, each with the file and line it came from.

Sources: local `.json` (a list, or an object with a `data`/`rows` list), `.jsonl` and `.jsonl.gz` files; a local
dataset saved with `datasets.save_to_disk` or a folder of such files; a hub name (`hub:org/name` or a bare
`org/name`) through `datasets.load_dataset` (needs network); `service:NAME@VERSION`, an immutable snapshot
exported by the preference-data service (alignment.service.snapshots), read from its files, never the database.
`${VAR}` / `${VAR:-default}` expand in the source.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class Record:
    """One source record, or the reason it could not be read."""

    file: str
    line: int | None
    value: Any = None
    error: str | None = None  # a reason code (malformed_json) when value could not be parsed
    detail: str = ""


def expand(source: str) -> str:
    from alignment.config import expand_env

    return expand_env(source)


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_file(path: Path) -> Iterator[Record]:
    name = str(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield Record(name, number, json.loads(line))
                except json.JSONDecodeError as error:
                    yield Record(
                        name, number, error="malformed_json", detail=f"{error.msg} at column {error.colno}"
                    )
        return
    with _open_text(path) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        yield Record(name, error.lineno, error="malformed_json", detail=error.msg)
        return
    if isinstance(data, dict):
        for key in ("data", "rows", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        yield Record(name, 1, error="malformed_json", detail="a .json file must hold a list of records")
        return
    for index, value in enumerate(data):
        yield Record(name, index + 1, value)  # 1-based record number within the file


def _read_dataset(dataset: Any, label: str) -> Iterator[Record]:
    for index, value in enumerate(dataset):
        yield Record(label, index + 1, dict(value))


def read_records(source: str, split: str | None = None, subset: str | None = None) -> Iterator[Record]:
    """Every record of a source, in order. Raises FileNotFoundError / ValueError with what to do."""
    source = expand(source)
    if source.startswith("service:"):
        yield from _read_service_snapshot(source)
        return
    path = Path(source).expanduser()
    if source.startswith("hub:") or (not path.exists() and _looks_like_hub_name(source)):
        import datasets

        name = source.removeprefix("hub:")
        dataset = datasets.load_dataset(name, subset, split=split or "train")
        yield from _read_dataset(dataset, f"hub:{name}[{split or 'train'}]")
        return
    if not path.exists():
        raise FileNotFoundError(
            f"data source {source} does not exist (a file, a dataset folder, or hub:<name>)"
        )
    if path.is_file():
        if not path.name.endswith(DATA_SUFFIXES):
            raise ValueError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz or .json")
        yield from read_file(path)
        return
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split is None:
                if len(dataset) != 1:
                    raise ValueError(f"{path} holds splits {list(dataset)}; set `split:`")
                split = next(iter(dataset))
            dataset = dataset[split]
        yield from _read_dataset(dataset, f"{path}[{split}]" if split else str(path))
        return
    files = sorted(p for p in path.iterdir() if p.name.endswith(DATA_SUFFIXES))
    if split is not None:
        files = [p for p in files if p.name.split(".")[0] == split]
    if not files:
        raise FileNotFoundError(f"{path} holds no data files ({', '.join(DATA_SUFFIXES)})")
    for file in files:
        yield from read_file(file)


def _read_service_snapshot(source: str) -> Iterator[Record]:
    """`service:NAME@VERSION`: the snapshot's pairs.jsonl under ALIGNMENT_SERVICE_SNAPSHOTS, hash-checked."""
    from alignment.service.snapshots import resolve_source

    name, _, version = source.removeprefix("service:").partition("@")
    if not name or not version:
        raise ValueError(
            f"{source}: a service source is service:NAME@VERSION (the version a snapshot returned)"
        )
    yield from read_file(resolve_source(name, version))


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~")) and "." not in parts[0][:1]
    )
