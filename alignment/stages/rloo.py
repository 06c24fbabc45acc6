"""RLOO from the SFT artifact over TRL 1.16's `RLOOTrainer`, rewarded by any `reward_models` spec.

Built exactly as the GRPO stage (alignment.stages.grpo); every RLOOConfig knob is a `rloo.<key>`.

Launch:
    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m alignment.stages.rloo \\
        --config configs/pipelines/smoke.yaml
"""

from __future__ import annotations

from pathlib import Path

from alignment.config import PipelineConfig
from alignment.stages.common import execute, stage_main
from alignment.stages.grpo import builder, finish

STAGE = "rloo"


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    return execute(pipeline, STAGE, builder(STAGE, "RLOOTrainer"), finish, force, restart)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
