"""Bad data files as a new user meets them: each is one clear error naming the file, the line where there is one,
and what to do, from `alignment data check` (exit 2, no traceback) and from the loader every stage calls."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import pwd
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from alignment.cli import build_parser, main
from alignment.data import DataConfig, DataError, load, load_checked

ROW = json.dumps({"prompt": "What is 2+2?", "completion": "4"})


def _check(source: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`alignment data check --source SOURCE` in this process: (exit code, stderr)."""
    code = main(["data", "check", "--source", source])
    return code, capsys.readouterr().err


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record hub look-ups instead of making them (a local typo must never reach the hub)."""
    import datasets

    asked: list[str] = []

    def load_dataset(name: str, *args: object, **kwargs: object) -> object:
        asked.append(name)
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


# ------------------------------------------------------------------------------------------- missing paths
def test_a_relative_path_with_a_typo_is_a_missing_file_not_a_hub_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_hub: list[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(ROW + "\n")
    monkeypatch.chdir(tmp_path)

    code, err = _check("data/trian.jsonl", capsys)

    assert no_hub == []
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith("error: data file data/trian.jsonl does not exist")
    )
    assert f"looked for {tmp_path / 'data' / 'trian.jsonl'}" in err  # the resolved path
    assert f"relative to the current directory {tmp_path}" in err  # where it was resolved from
    assert "Did you mean data/train.jsonl?" in err
    assert "hub:<org>/<name>" in err


def test_a_typo_in_the_folder_suggests_the_folder_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hub: list[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(ROW + "\n")
    monkeypatch.chdir(tmp_path)
    messages = {}
    for source in (
        "dta/train.jsonl",
        "./dta/train",
        "data/train",
    ):  # a suffix, ./, or an existing first folder
        with pytest.raises(DataError) as error:
            load_checked(DataConfig(source=source), "sft")
        messages[source] = str(error.value)
        assert messages[source].startswith(f"data file {source} does not exist")
    assert no_hub == []
    assert f"the folder {tmp_path / 'dta'} does not exist either" in messages["dta/train.jsonl"]
    assert "Did you mean data/train.jsonl?" in messages["dta/train.jsonl"]
    assert "Did you mean data/train.jsonl?" in messages["data/train"]


def test_a_hub_name_still_goes_to_the_hub_and_its_failure_says_both_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hub: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        load_checked(DataConfig(source="someorg/somedata"), "sft")
    message = str(error.value)
    assert no_hub == ["someorg/somedata"]
    assert message.startswith("hub dataset someorg/somedata could not be loaded")
    assert "Couldn't reach" in message
    assert (
        f"If you meant a local file: data file someorg/somedata does not exist (looked for {tmp_path}"
        in message
    )


# ------------------------------------------------------------------------------------------------- encoding
def test_a_non_utf8_file_names_the_line_and_byte_offset_and_how_to_re_encode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.jsonl"
    content = ROW + "\n" + ROW + "\n" + json.dumps({"prompt": "café", "completion": "ok"}, ensure_ascii=False)
    raw = content.encode("latin-1")
    path.write_bytes(raw)
    offset = raw.index(b"\xe9")
    column = offset - (raw.rindex(b"\n", 0, offset) + 1)

    code, err = _check(str(path), capsys)

    assert code == 2 and err.count("\n") == 1
    assert f"{path}:3: not valid UTF-8: byte 0xe9 at byte offset {offset} (byte {column} of line 3" in err
    assert f"iconv -f <encoding> -t utf-8 {path}" in err


@pytest.mark.parametrize("name", ["rows.json", "rows.jsonl.gz"])
def test_a_non_utf8_json_or_gzip_file_is_located_the_same_way(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    bad_row = ROW.replace("4", "quatre \u00e0")  # à is 0xe0 in cp1252
    if name.endswith(".gz"):
        raw = (ROW + "\n" + bad_row + "\n").encode("cp1252")
        path.write_bytes(gzip.compress(raw))
    else:
        raw = ("[\n" + ROW + ",\n" + bad_row + "\n]\n").encode("cp1252")
        path.write_bytes(raw)
    with pytest.raises(DataError) as error:
        load_checked(DataConfig(source=str(path)), "sft")
    offset = raw.index(b"\xe0")
    line = raw.count(b"\n", 0, offset) + 1
    assert f"{path}:{line}: not valid UTF-8: byte 0xe0 at byte offset {offset}" in str(error.value)
    assert "re-encode it" in str(error.value) and "iconv" in str(error.value)


def test_a_utf16_file_is_named_as_utf16() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "powershell.jsonl"
        path.write_bytes(
            (ROW + "\n").encode("utf-16")
        )  # with its byte-order mark, as PowerShell's `>` writes
        with pytest.raises(
            DataError, match=r":1: not valid UTF-8: byte 0x(ff|fe) at byte offset 0 .*iconv -f utf-16"
        ):
            load(DataConfig(source=str(path)), "sft")


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 64])
def test_the_first_undecodable_byte_is_found_across_read_blocks(tmp_path: Path, block_size: int) -> None:
    from alignment.data.sources import first_undecodable_byte

    # Multi-byte UTF-8 characters cut by block boundaries are fine; the stray 0xff on line 3 is not.
    raw = "é€😀\n".encode() * 2 + "ab€".encode() + b"\xff" + b"z\n"
    path = tmp_path / "x.jsonl"
    path.write_bytes(raw)
    bad = first_undecodable_byte(path, block_size=block_size)
    assert bad is not None
    assert (bad.line, bad.offset, bad.column, bad.value) == (3, raw.index(b"\xff"), 5, 0xFF)
    path.write_bytes("é€😀\n".encode() * 3)
    assert first_undecodable_byte(path, block_size=block_size) is None


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path) -> None:
    path = tmp_path / "notepad.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (ROW + "\n" + ROW + "\n").encode())
    result = load_checked(DataConfig(source=str(path)), "sft")
    assert len(result.rows) == 2 and result.rejects == []


# ----------------------------------------------------------------------------------------------- permission
NOBODY = next((entry.pw_uid for entry in pwd.getpwall() if entry.pw_name == "nobody"), 65534)


@contextmanager
def unreadable_here(*paths: Path) -> Iterator[None]:
    """Make `paths` unreadable to this process, for real: mode 000, and as root (whom the kernel lets read
    anything) the effective user switched to `nobody` for the duration, so `open` really fails with EACCES."""
    for path in paths:
        path.chmod(0)
    try:
        if os.geteuid() != 0:
            yield
            return
        try:
            os.seteuid(NOBODY)
        except PermissionError:
            pytest.skip(
                "running as root without the right to switch the effective user: cannot make a file unreadable"
            )
        try:
            yield
        finally:
            os.seteuid(0)
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_unreadable_file_is_a_one_line_error_saying_to_check_permissions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Import every module the command and its error handler need while this process can still read them all.
    build_parser()
    for module in ("alignment.artifacts", "alignment.evaluate", "alignment.finite", "alignment.generation"):
        importlib.import_module(module)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o755)  # others may enter the folder; only the file is unreadable
        path = Path(folder) / "train.jsonl"
        path.write_text(ROW + "\n")
        with unreadable_here(path):
            code, err = _check(str(path), capsys)
            with pytest.raises(DataError) as error:
                load_checked(DataConfig(source=str(path)), "sft")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: permission denied")
    assert "check its permissions" in err and f"chmod a+r {path}" in err
    assert str(error.value) == err.removeprefix("error: ").strip()


def test_a_file_in_a_folder_this_user_may_not_enter_says_to_check_permissions() -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o755)
        locked = Path(folder) / "locked"
        locked.mkdir()
        (locked / "train.jsonl").write_text(ROW + "\n")
        with unreadable_here(locked), pytest.raises(DataError) as error:
            load_checked(DataConfig(source=str(locked / "train.jsonl")), "sft")
    assert f"{locked / 'train.jsonl'}: permission denied" in str(error.value)
    assert "those of its folders" in str(error.value)


# ------------------------------------------------------------------------------------ empty, folders, types
def test_an_empty_file_says_it_is_empty_and_what_a_data_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = _check(str(empty), capsys)
    assert (
        code == 2
        and err
        == f"error: {empty} is empty (0 bytes): a .jsonl file holds one JSON record per line, "
        "a .json file a list of records\n"
    )

    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match=f"{blank} holds no records .*one JSON record per line"):
        load_checked(DataConfig(source=str(blank)), "sft")


def test_a_folder_without_data_files_says_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt,completion\nq,a\n")
    with pytest.raises(DataError, match="holds no data files .*give the path of a data file"):
        load_checked(DataConfig(source=str(tmp_path)), "sft")


def test_a_subfolder_named_like_a_data_file_is_not_read_as_one(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(ROW + "\n")
    (tmp_path / "old.jsonl").mkdir()
    assert len(load_checked(DataConfig(source=str(tmp_path)), "sft").rows) == 1


def test_an_unsupported_file_type_says_how_to_convert_it(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("prompt,completion\nq,a\n")
    with pytest.raises(
        DataError, match=r"rows.csv: unsupported file type .csv; .*to_json\(OUT, orient='records'"
    ):
        load_checked(DataConfig(source=str(path)), "sft")


def test_a_gz_file_that_is_not_gzip_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_text(ROW + "\n")
    with pytest.raises(DataError, match=f"{path}: not a valid gzip file .*drop the .gz suffix"):
        load_checked(DataConfig(source=str(path)), "sft")
