"""Test data for the service tests; the server they run against is bench.servers' (shared with the benchmark)."""

from __future__ import annotations

from typing import Any

from bench.servers import ServerProcess, free_port  # noqa: F401 - the service tests' server and ports


def pair(i: int, tag: str = "") -> dict[str, Any]:
    """A distinct valid text pair."""
    return {
        "prompt": f"question {tag}{i}?",
        "chosen": f"a helpful answer {i}",
        "rejected": f"a poor answer {i}",
    }
