"""Every `alignment` command prints its help, and the CLI starts without loading torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignment.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # the subparsers
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_command_has_a_help_text(command: str) -> None:
    parser = build_parser()
    assert "usage:" in parser.format_help()
    action = next(a for a in parser._actions if a.dest == "command")
    assert "usage:" in action.choices[command].format_help()


def test_the_cli_starts_without_torch() -> None:
    code = "import sys\nfrom alignment.cli import build_parser\nbuild_parser().format_help()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
