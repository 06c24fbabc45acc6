"""The service's subcommands of `alignment` (serve, tokens, submit, worker)."""

from __future__ import annotations

import argparse

COMMANDS: tuple[str, ...] = ()


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the service's subcommands on the `alignment` parser."""


def run(args: argparse.Namespace) -> int:
    """Run one of the service's subcommands."""
    raise NotImplementedError(args.command)
