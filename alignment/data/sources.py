"""Reading records from where data lives, each with the file and line it came from.

Sources: local `.json` (a list, or an object with a `data`/`rows` list), `.jsonl` and `.jsonl.gz` files; a local
dataset saved with `datasets.save_to_disk` or a folder of such files; a hub name (`hub:org/name` or a bare
`org/name`) through `datasets.load_dataset` (needs network); `service:NAME@VERSION`, an immutable snapshot
exported by the preference-data service (format: alignment.data.snapshot), read from its files, never the database.
`${VAR}` / `${VAR:-default}` expand in the source.

Relative paths are resolved from the current directory (not from the config file's folder). A source that looks
like a path (a file suffix such as `.jsonl`, a leading `./`, `../`, `/` or `~`, or a first folder that exists
here) and does not exist is a missing file, never a hub name. Every file problem (missing, unreadable, not
UTF-8, empty, not gzip) is a DataError naming the file, the line where there is one, and what to do.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from alignment.data.snapshot import resolve_service_snapshot
from alignment.schema import expand_env

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
# Suffixes that make a source a path even when it does not exist (data files we read and ones users try).
PATH_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".yaml", ".yml")
HUB_HINT = "For a Hugging Face hub dataset write hub:<org>/<name>"


class DataError(ValueError):
    """Data that cannot be used as given; the message names files, lines and what to do."""


@dataclass
class Record:
    """One source record, or the reason it could not be read."""

    file: str
    line: int | None
    value: Any = None
    error: str | None = None  # a reason code (malformed_json) when value could not be parsed
    detail: str = ""


def expand(source: str) -> str:
    return expand_env(source)


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark (Windows editors write one) is an encoding marker, not part of record 1
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def read_file(path: Path) -> Iterator[Record]:
    """Every record of one .jsonl / .json (optionally .gz) file; a DataError with what to do when the file
    cannot be read or decoded."""
    try:
        yield from _parse_file(path)
    except UnicodeDecodeError as error:
        raise DataError(decode_error_message(path)) from error
    except (OSError, EOFError) as error:  # EOFError: a truncated .gz
        raise DataError(file_error_message(path, error)) from error


def _parse_file(path: Path) -> Iterator[Record]:
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


def read_records(
    source: str, split: str | None = None, subset: str | None = None, revision: str | None = None
) -> Iterator[Record]:
    """Every record of a source, in order; `revision` pins a hub dataset (a tag, branch or commit). Raises
    FileNotFoundError / ValueError with what to do."""
    source = expand(source)
    if source.startswith("service:"):
        yield from _read_service_snapshot(source)
        return
    path = Path(source).expanduser()
    try:
        exists = path.exists()
    except OSError as error:  # a folder on the way that this user may not enter
        raise DataError(file_error_message(path, error)) from error
    if source.startswith("hub:") or (
        not exists and not looks_like_path(source) and _looks_like_hub_name(source)
    ):
        yield from _read_hub(source, split, subset, revision)
        return
    if not exists:
        raise DataError(missing_path_message(source))
    if path.is_file():
        if not path.name.endswith(DATA_SUFFIXES):
            raise DataError(
                f"{path}: unsupported file type {''.join(path.suffixes) or '(no suffix)'}; use .jsonl, .jsonl.gz, "
                ".json or .json.gz (one JSON record per line in .jsonl), e.g. convert a CSV with pandas: "
                "pd.read_csv(FILE).to_json(OUT, orient='records', lines=True)"
            )
        count = 0
        for record in read_file(path):
            count += 1
            yield record
        if not count:
            raise DataError(empty_file_message(path))
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
    try:
        files = sorted(p for p in path.iterdir() if p.name.endswith(DATA_SUFFIXES) and not p.is_dir())
    except OSError as error:
        raise DataError(file_error_message(path, error)) from error
    if split is not None:
        files = [p for p in files if p.name.split(".")[0] == split]
    if not files:
        wanted = f" named {split}.*" if split is not None else ""
        raise DataError(
            f"{path} is a folder that holds no data files{wanted} ({', '.join(DATA_SUFFIXES)}) and is not a "
            "dataset saved with datasets.save_to_disk: give the path of a data file, or put data files in it"
        )
    count = 0
    for file in files:
        for record in read_file(file):
            count += 1
            yield record
    if not count:
        raise DataError(f"{path}: its data files ({', '.join(p.name for p in files)}) hold no records")


def _read_hub(source: str, split: str | None, subset: str | None, revision: str | None) -> Iterator[Record]:
    import datasets

    name = source.removeprefix("hub:")
    try:
        dataset = datasets.load_dataset(name, subset, split=split or "train", revision=revision)
    except (OSError, ValueError) as error:  # not found, offline (ConnectionError), bad split or subset
        local = (
            ""
            if source.startswith("hub:")
            else f". If you meant a local file: {missing_path_message(source, hub_hint=False)}"
        )
        offline = (
            " (HF_HUB_OFFLINE=1 is set: only datasets already in the local cache can load)"
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            else ""
        )
        raise DataError(f"hub dataset {name} could not be loaded{offline}: {error}{local}") from error
    at = f"@{revision}" if revision else ""
    yield from _read_dataset(dataset, f"hub:{name}{at}[{split or 'train'}]")


def _read_service_snapshot(source: str) -> Iterator[Record]:
    """`service:NAME@VERSION`: the snapshot's pairs.jsonl under ALIGNMENT_SERVICE_SNAPSHOTS, hash-checked."""
    name, _, version = source.removeprefix("service:").partition("@")
    if not name or not version:
        raise ValueError(
            f"{source}: a service source is service:NAME@VERSION (the version a snapshot returned)"
        )
    yield from read_file(resolve_service_snapshot(name, version))


def looks_like_path(source: str) -> bool:
    """A file suffix, a leading `./` `../` `/` `~`, or a first folder that exists here: a path, not a hub name."""
    if source.startswith(("./", "../", "/", "~")) or source in (".", ".."):
        return True
    if source.lower().endswith(PATH_SUFFIXES):
        return True
    first, separator, _ = source.replace(os.sep, "/").partition("/")
    return bool(separator and first and Path(first).exists())


def missing_path_message(source: str, hub_hint: bool = True) -> str:
    """What to say about a path that does not exist: where it was looked for, close names, the hub spelling."""
    path = Path(source).expanduser()
    absolute = Path(os.path.abspath(path))
    where = f"looked for {absolute}"
    if not path.is_absolute():
        where += f", relative to the current directory {Path.cwd()}"
    # The deepest folder that exists, and the first part of the path missing from it.
    existing, missing_index = absolute, len(absolute.parts)
    while not existing.is_dir() and existing != existing.parent:
        existing, missing_index = existing.parent, missing_index - 1
    missing_part = absolute.parts[missing_index] if missing_index < len(absolute.parts) else absolute.name
    if existing != absolute.parent:
        where += f"; the folder {existing / missing_part} does not exist either"
    try:
        entries = sorted(entry.name for entry in existing.iterdir())
    except OSError:
        entries = []
    matches = difflib.get_close_matches(missing_part, entries, n=3, cutoff=0.6)
    # Suggest in the user's own spelling: their path with the missing part replaced.
    user_parts = list(Path(source).parts)
    offset = len(user_parts) - (len(absolute.parts) - missing_index)
    suggestions = []
    for match in matches:
        corrected = existing / match / Path(*absolute.parts[missing_index + 1 :])
        if not corrected.exists():  # a folder with a close name, but the rest of the path is not in it
            continue
        if 0 <= offset < len(user_parts):
            suggestions.append(str(Path(*user_parts[:offset], match, *user_parts[offset + 1 :])))
        else:
            suggestions.append(str(corrected))
    message = f"data file {source} does not exist ({where})."
    if suggestions:
        others = f" (or {', '.join(suggestions[1:])})" if suggestions[1:] else ""
        message += f" Did you mean {suggestions[0]}{others}?"
    return message + (f" {HUB_HINT}." if hub_hint else "")


def file_error_message(path: Path, error: BaseException) -> str:
    """A file or folder that exists but cannot be read: which, why, and what to do."""
    if isinstance(error, PermissionError):
        return (
            f"{path}: permission denied reading it (as user id {os.geteuid()}); check its permissions and those of "
            f"its folders (ls -l {path}) and make it readable, e.g. chmod a+r {path}"
        )
    if isinstance(error, (gzip.BadGzipFile, EOFError)):
        return (
            f"{path}: not a valid gzip file ({error}); re-compress it (gzip -c FILE > {path}) or, if it is plain "
            "text, drop the .gz suffix"
        )
    reason = getattr(error, "strerror", None) or str(error)
    return f"{path}: cannot be read ({reason})"


def empty_file_message(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    what = (
        "is empty (0 bytes)"
        if size == 0
        else f"holds no records ({size} bytes of blank lines or an empty list)"
    )
    return f"{path} {what}: a .jsonl file holds one JSON record per line, a .json file a list of records"


class BadByte(NamedTuple):
    line: int  # 1-based
    offset: int  # in the file (of the decompressed text for .gz)
    column: int  # byte offset within the line
    value: int
    before: bytes  # up to 20 bytes before it, to find it in an editor


def first_undecodable_byte(path: Path, block_size: int = 1 << 20) -> BadByte | None:
    """The first byte of a file that is not UTF-8, or None. Reads block by block: data files can be large."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        carry, base, line, line_start = b"", 0, 1, 0  # base: file offset of carry[0]
        while True:
            block = handle.read(block_size)
            data = carry + block
            if not data:
                return None
            try:
                data.decode("utf-8")
                complete = len(data)
            except UnicodeDecodeError as error:
                cut = block and error.end == len(data) and error.reason == "unexpected end of data"
                if not cut:  # a real error (a character cut at the very end of the file is one too)
                    newlines = data.count(b"\n", 0, error.start)
                    if newlines:
                        line_start = base + data.rindex(b"\n", 0, error.start) + 1
                    offset = base + error.start
                    before = data[max(error.start - 20, 0) : error.start]
                    return BadByte(line + newlines, offset, offset - line_start, data[error.start], before)
                complete = error.start  # a character cut by the block boundary: decode it with the next block
            newlines = data.count(b"\n", 0, complete)
            if newlines:
                line_start = base + data.rindex(b"\n", 0, complete) + 1
            line += newlines
            carry, base = data[complete:], base + complete


def decode_error_message(path: Path) -> str:
    """A file that is not UTF-8: the line and byte offset of its first undecodable byte, and how to re-encode."""
    bad = first_undecodable_byte(path)
    if bad is None:  # it decodes now: the file changed while it was read
        return f"{path}: not valid UTF-8 text; data files must be UTF-8"
    gz = path.name.endswith(".gz")
    encoding = "<encoding>"
    with (gzip.open if gz else open)(path, "rb") as handle:
        # A UTF-16 byte-order mark: what PowerShell's `>` writes.
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            encoding = "utf-16"
    command = (
        f"zcat {path} | iconv -f {encoding} -t utf-8 | gzip > FIXED.jsonl.gz"
        if gz
        else f"iconv -f {encoding} -t utf-8 {path} > FIXED{''.join(path.suffixes)}"
    )
    guess = " (`file -i` guesses the encoding; often cp1252 or latin1)" if encoding == "<encoding>" else ""
    within = " of the decompressed text" if gz else ""
    after = f", after {bad.before!r}" if bad.before else ""
    return (
        f"{path}:{bad.line}: not valid UTF-8: byte 0x{bad.value:02x} at byte offset {bad.offset}{within} (byte "
        f"{bad.column} of line {bad.line}{after}); data files must be UTF-8: re-encode it, e.g. {command}{guess}"
    )


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~")) and "." not in parts[0][:1]
    )
