"""alignment.progress: events written by a stage, read back by the pipeline, rendered as one line."""

from __future__ import annotations

import json

from alignment.progress import (
    PlainThrottle,
    ProgressReader,
    emit,
    eta_seconds,
    format_duration,
    render_line,
)


def test_emit_writes_one_json_line_per_event_and_the_reader_returns_only_new_ones(tmp_path):
    path = tmp_path / "reward.progress.jsonl"
    reader = ProgressReader(path)
    assert reader.poll() == []  # no file yet
    emit(1, 8, 2.0, path=path, loss=0.7, reward=None)
    emit(2, 8, 4.0, path=path, loss=0.6)
    assert reader.poll() == [
        {"step": 1, "total": 8, "elapsed": 2.0, "loss": 0.7},
        {"step": 2, "total": 8, "elapsed": 4.0, "loss": 0.6},
    ]
    assert reader.poll() == []
    emit(3, 8, 6.0, path=path, start_step=1, kl=0.25)
    assert reader.poll() == [{"step": 3, "total": 8, "elapsed": 6.0, "start_step": 1, "kl": 0.25}]


def test_the_reader_waits_for_a_line_to_be_complete(tmp_path):
    path = tmp_path / "p.jsonl"
    reader = ProgressReader(path)
    line = json.dumps({"step": 1, "total": 2, "elapsed": 1.0})
    path.write_text(line[:10])
    assert reader.poll() == []
    with open(path, "a") as handle:
        handle.write(line[10:] + "\n")
    assert reader.poll() == [{"step": 1, "total": 2, "elapsed": 1.0}]


def test_emit_without_a_path_or_the_variable_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIGNMENT_PROGRESS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    emit(1, 2, 1.0, loss=1.0)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("ALIGNMENT_PROGRESS_FILE", str(tmp_path / "x.jsonl"))
    emit(1, 2, 1.0, loss=1.0)
    assert ProgressReader(tmp_path / "x.jsonl").poll() == [
        {"step": 1, "total": 2, "elapsed": 1.0, "loss": 1.0}
    ]


def test_durations_read_as_minutes_and_hours():
    assert format_duration(12) == "0:12"
    assert format_duration(185.4) == "3:05"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(-1) == "0:00"


def test_eta_is_the_pace_of_the_steps_this_process_ran():
    assert eta_seconds({"step": 6, "total": 8, "elapsed": 12.0}) == 4.0  # 2 s a step, 2 steps left
    # resumed at step 4: 2 steps in 12 s, 6 s a step, 2 left
    assert eta_seconds({"step": 6, "total": 8, "elapsed": 12.0, "start_step": 4}) == 12.0
    assert eta_seconds({"step": 4, "total": 8, "elapsed": 0.0, "start_step": 4}) is None


def test_render_line_shows_step_figures_elapsed_and_eta():
    event = {"step": 6, "total": 8, "elapsed": 12.0, "loss": 0.5123}
    assert render_line("[2/3] reward", event) == "[2/3] reward  step 6/8  loss 0.512  0:12 < 0:04"
    ppo = {"step": 3, "total": 10, "elapsed": 90.0, "loss": 0.1, "reward": -0.25, "kl": 1.5}
    assert (
        render_line("arm 1/2 [2/2] ppo", ppo)
        == "arm 1/2 [2/2] ppo  step 3/10  loss 0.100  reward -0.250  kl 1.500  1:30 < 3:30"
    )


def test_the_plain_throttle_prints_at_most_one_line_per_interval_and_the_last_at_the_end():
    now = [0.0]
    throttle = PlainThrottle(interval=10.0, clock=lambda: now[0])
    events = [{"step": k} for k in range(1, 6)]
    shown = []
    for k, event in enumerate(events):
        now[0] = k * 4.0  # 0, 4, 8, 12, 16 s
        if (line := throttle.offer(event)) is not None:
            shown.append(line["step"])
    assert shown == [1, 4]
    assert throttle.flush() == {"step": 5}
    assert throttle.flush() is None


def test_library_noise_is_filtered_by_message_and_other_warnings_still_show():
    import warnings

    from alignment.progress import quiet_library_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` as a UserWarning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else is deprecated",
        "`is_gradient_checkpointing` as a UserWarning",
    ]
