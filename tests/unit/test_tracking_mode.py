"""W&B mode: online whenever wandb has credentials (WANDB_API_KEY or the netrc file `wandb login` writes), offline
otherwise, WANDB_MODE and a named tracking.mode win; the line printed at the start says which and why, and how to
sync offline runs. Every case runs against a fake HOME: nothing here reads the real credentials or goes online."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.tracking import TrackingMode, announce, decide_mode, resolve_mode
from tests.helpers import run_cli_in_process

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters: the shape of a W&B API key, not a real one


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME with no W&B variables: a machine where nobody ran `wandb login`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(variable, raising=False)
    return home


def _login(netrc: Path, machine: str = "api.wandb.ai") -> None:
    """What `wandb login` leaves behind."""
    netrc.write_text(f"machine {machine}\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)


def test_wandb_login_credentials_in_netrc_go_online(home: Path) -> None:
    _login(home / ".netrc")
    decided = decide_mode("auto")
    assert decided.mode == "online"
    assert str(home / ".netrc") in decided.reason
    line = announce("auto", home / "runs" / "x")
    assert line.startswith("W&B: online (wandb credentials from ") and FAKE_KEY not in line


def test_netrc_named_by_the_netrc_variable_goes_online(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = home / "secrets" / "netrc"
    elsewhere.parent.mkdir()
    _login(elsewhere)
    monkeypatch.setenv("NETRC", str(elsewhere))
    assert decide_mode("auto").mode == "online"


def test_api_key_variable_goes_online_without_printing_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    decided = decide_mode("auto")
    assert (decided.mode, decided.reason) == ("online", "wandb credentials from WANDB_API_KEY")
    assert FAKE_KEY not in announce("auto", "runs/x")


def test_no_credentials_is_offline_saying_why_and_how_to_sync(home: Path, tmp_path: Path) -> None:
    _login(home / ".netrc", machine="example.org")  # a netrc, but no entry for W&B
    decided = decide_mode("auto")
    assert decided.mode == "offline"
    assert "no wandb credentials" in decided.reason and str(home / ".netrc") in decided.reason
    assert "wandb login" in decided.reason
    line = announce("auto", tmp_path / "runs" / "x")
    assert line.startswith("W&B: offline (no wandb credentials")
    assert line.endswith(f"sync later: wandb sync {tmp_path / 'runs' / 'x'}/wandb/offline-run-*")
    nested = announce("auto", tmp_path / "runs" / "c", nested=True)
    assert nested.endswith(
        f"find {tmp_path / 'runs' / 'c'} -type d -name 'offline-run-*' -exec wandb sync {{}} +"
    )


def test_wandb_mode_and_a_named_mode_win_over_credentials(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(home / ".netrc")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert decide_mode("auto") == TrackingMode("offline", "WANDB_MODE=offline")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("auto") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert decide_mode("disabled").mode == "disabled" and decide_mode("offline").mode == "offline"
    assert decide_mode("offline").reason == "tracking.mode is offline"
    assert announce("disabled", "runs/x") == "W&B: disabled (tracking.mode is disabled)"


def test_run_prints_the_mode_first(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    _login(home / ".netrc")
    code, out, _ = run_cli_in_process(capsys, "run", "smoke", "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == f"W&B: online (wandb credentials from {home / '.netrc'})"
    (home / ".netrc").unlink()
    code, out, _ = run_cli_in_process(capsys, "run", "smoke", "--dry-run", "tracking.mode=disabled")
    assert out.splitlines()[0] == "W&B: disabled (tracking.mode is disabled)"
