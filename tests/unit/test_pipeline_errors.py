from alignment.pipeline import stage_error_lines

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
