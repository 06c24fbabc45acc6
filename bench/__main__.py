"""`python -m bench <suite> [options]`: run one benchmark suite (see each module's docstring)."""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "stages": ("bench.stages", "per-stage tokens/s and MFU against this machine's measured matmul peak"),
    "ppo": ("bench.ppo", "our PPO vs a learned RM and vs rule:tasks, beside TRL 1.12.0's PPOTrainer"),
    "decode": (
        "bench.decode",
        "one decoding step of `generate` against this machine's memory and compute bounds",
    ),
    "engines": (
        "bench.engines",
        "one decoding step of each generation backend (hf, vllm) and dtype, side by side",
    ),
    "profile": ("bench.profile", "torch.profiler over a TRL-backed stage's steps, time by operator class"),
    "scaling": ("bench.scaling", "a stage's time vs samples, sequence length, and 1 vs 2 processes"),
    "faults": (
        "bench.faults",
        "each stage SIGKILLed at random moments and resumed: artifacts whole, losses equal to an uninterrupted run",
    ),
    "service": (
        "bench.service",
        "preference-data service: accepted pairs/s and latency, SQLite and PostgreSQL",
    ),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        lines = [f"  {name:<8} {about}" for name, (_, about) in SUITES.items()]
        print("usage: python -m bench <suite> [options]\n\nsuites:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(SUITES[sys.argv[1]][0])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
