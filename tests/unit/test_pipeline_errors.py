from pathlib import Path

from alignment.pipeline import log_lines, stage_error_lines, stage_exception

STAGE_ERROR = [
    "[INFO] Running in WANDB offline mode",
    "[reward] data 'train' from /data/missing.jsonl: data source /data/missing.jsonl does not exist",
    "RuntimeError: [reward] data 'train' from /data/missing.jsonl: data source does not exist",
]
# What `accelerate launch` (1.16) prints after its child fails (blank lines are dropped by the runner).
LAUNCHER_TRACE = [
    "The above exception was the direct cause of the following exception:",
    "Traceback (most recent call last):",
    '  File "<frozen runpy>", line 198, in _run_module_as_main',
    *[f'  File "accelerate/commands/launch.py", line {n}, in main' for n in range(20)],
    "    raise subprocess.CalledProcessError(",
    "subprocess.CalledProcessError: Command '['python', '-m', 'alignment.stages.reward']' returned non-zero exit"
    " status 1.",
]


def test_the_launchers_traceback_does_not_hide_the_stages_error() -> None:
    assert stage_error_lines(STAGE_ERROR + LAUNCHER_TRACE) == STAGE_ERROR


def test_a_stage_traceback_is_kept_when_the_launcher_adds_none() -> None:
    own = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad beta"]
    assert stage_error_lines(["noise"] * 30 + own, limit=3) == own


def test_the_exception_that_ended_a_stage_is_found_under_the_launchers_traceback(tmp_path: Path) -> None:
    stage_trace = [
        "Traceback (most recent call last):",
        '  File "alignment/stages/ppo.py", line 74, in check_reward_models',
        "    report = check_good_enough(path, args.min_rm_accuracy, args.force)",
        "reward_models.check.RewardModelNotGoodEnough: held-out accuracy 0.505 is below the required 0.600.",
    ]
    # Progress bars redraw with carriage returns; the launcher's traceback alone is longer than 40 lines.
    log = tmp_path / "ppo.log"
    launcher = LAUNCHER_TRACE[:3] + LAUNCHER_TRACE[3:-2] * 3 + LAUNCHER_TRACE[-2:]
    assert len(launcher) > 40
    log.write_text("Loading weights: 0%\rLoading weights: 100%\n" + "\n".join(stage_trace + launcher))
    lines = log_lines(log)
    assert lines[:2] == ["Loading weights: 0%", "Loading weights: 100%"]
    assert stage_exception(lines) == stage_trace[-1]
    assert stage_exception(["[sft] done", "no traceback here"]) is None
    assert log_lines(tmp_path / "missing.log") == []
