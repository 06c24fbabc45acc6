"""Weights & Biases: each stage is a run, `group` = pipeline run id, `job_type` = stage.

The run is started here, on the main process only, before the trainer exists; transformers' WandbCallback finds
it and logs into it. `tracking.mode: auto` (the default) is online when wandb has credentials, wherever wandb
itself finds them (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or the netrc file `wandb login` writes), and offline
otherwise, so runs are never lost and can be synced later with `wandb sync <dir>`; `WANDB_MODE` overrides `auto`.
`tracking.mode: disabled` turns W&B off entirely. `alignment run` and `alignment compare` print the mode and why
at the start (`announce`).

Lineage: the stage's data snapshot is logged as a `dataset` artifact and marked as used by the run; the
published output as a `model` artifact (by file reference, no copy of the weights). W&B then shows
data -> stage -> model, and the next stage's `use_artifact` of that model links the stages. W&B refuses
`use_artifact` in offline mode, so offline runs log the dataset artifact as an output of the run and record
every input (data snapshots with their hashes, upstream models) in the model artifact's `inputs` metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.config import PipelineConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingMode:
    mode: str
    """online, offline or disabled."""
    reason: str
    """Why, in words: the config's mode, WANDB_MODE, or where wandb's credentials are (never the key)."""


def decide_mode(mode: str) -> TrackingMode:
    """The mode W&B runs in for `tracking.mode`: a named mode as it is; `auto` follows WANDB_MODE when set, else
    online when wandb has credentials and offline when it has none."""
    if mode != "auto":
        return TrackingMode(mode, f"tracking.mode is {mode}")
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode in ("offline", "online", "disabled", "dryrun"):
        return TrackingMode("offline" if env_mode == "dryrun" else env_mode, f"WANDB_MODE={env_mode}")
    found, where = wandb_credentials()
    if found:
        return TrackingMode("online", f"wandb credentials from {where}")
    return TrackingMode("offline", f"no wandb credentials: {where}; run `wandb login` to go online")


def wandb_credentials() -> tuple[bool, str]:
    """(whether wandb has an API key or an identity token, where it is or where it was looked for), by wandb's
    own lookup: the environment, then the netrc file (`wandb login` writes it; NETRC or ~/.netrc) for the W&B host
    (WANDB_BASE_URL or wandb's default). Nothing returned or printed holds the key."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return True, variable
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib.wbauth import HostUrl, wbnetrc
    from wandb.sdk.wandb_settings import Settings

    host = HostUrl(os.environ.get("WANDB_BASE_URL") or Settings.model_fields["base_url"].default)
    netrc_path = wbnetrc._get_netrc_file_path()  # the file wandb.init reads
    try:
        found = wbnetrc.read_netrc_auth_with_source(host=host)
    except AuthenticationError:
        return False, f"the entry for {host.url} in {netrc_path} is not a valid API key"
    if found is not None:
        return True, found.source
    return False, f"WANDB_API_KEY unset, no key for {host.url} in {netrc_path}"


def resolve_mode(mode: str) -> str:
    """`decide_mode`'s mode: online, offline or disabled."""
    return decide_mode(mode).mode


def announce(mode: str, output_dir: str | Path, nested: bool = False) -> str:
    """The line `alignment run` / `compare` print at the start: the W&B mode, why, and for offline runs the
    command that uploads them later. A pipeline's stages write their runs to `<output_dir>/wandb/`; `nested`:
    a comparison's runs lie in folders below its output_dir."""
    decided = decide_mode(mode)
    line = f"W&B: {decided.mode} ({decided.reason})"
    if decided.mode == "offline":
        folder = shlex.quote(str(Path(output_dir).resolve()))
        if nested:
            line += f"; sync later: find {folder} -type d -name 'offline-run-*' -exec wandb sync {{}} +"
        else:
            line += f"; sync later: wandb sync {folder}/wandb/offline-run-*"
    return line


def pipeline_run_id(pipeline: PipelineConfig) -> str:
    """The W&B group of all stages of one pipeline run: set by the runner, the config, or derived."""
    if os.environ.get("ALIGNMENT_RUN_ID"):
        return os.environ["ALIGNMENT_RUN_ID"]
    if pipeline.tracking.group:
        return pipeline.tracking.group
    blob = json.dumps(
        {k: v for k, v in pipeline.resolved().items() if k not in ("tracking",)}, sort_keys=True, default=str
    )
    return f"{pipeline.name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def report_to(pipeline: PipelineConfig) -> list[str]:
    return [] if resolve_mode(pipeline.tracking.mode) == "disabled" else ["wandb"]


class StageTracker:
    """One W&B run for one stage on the main process; a no-op elsewhere or when disabled."""

    def __init__(self, pipeline: PipelineConfig, stage: str, config_hash: str, is_main_process: bool) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.config_hash = config_hash
        self.mode = resolve_mode(pipeline.tracking.mode)
        self.is_main_process = is_main_process
        self.enabled = is_main_process and self.mode != "disabled"
        self.run: Any = None
        self.inputs: list[str] = []

    def start(self, config: dict[str, Any]) -> None:
        if self.is_main_process:
            logger.info(announce(self.pipeline.tracking.mode, self.pipeline.output_dir))
        if not self.enabled:
            os.environ.setdefault("WANDB_MODE", "disabled" if self.mode == "disabled" else self.mode)
            return
        import wandb

        group = pipeline_run_id(self.pipeline)
        wandb_dir = Path(self.pipeline.output_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_MODE"] = self.mode
        os.environ["WANDB_PROJECT"] = self.pipeline.tracking.project
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=self.pipeline.tracking.project,
            entity=self.pipeline.tracking.entity,
            group=group,
            job_type=self.stage,
            name=f"{self.stage}-{self.config_hash[:8]}",
            id=f"{group}-{self.stage}-{self.config_hash[:8]}".replace("/", "-")[:64],
            resume="allow",
            config={"alignment": config, "config_hash": self.config_hash, "stage": self.stage},
            tags=list(self.pipeline.tracking.tags),
            dir=str(wandb_dir),
            mode=self.mode,
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def use_dataset(self, path: str | Path, name: str, content_hash: str, metadata: dict[str, Any]) -> None:
        if self.run is None or not self.pipeline.tracking.log_artifacts:
            return
        import wandb

        artifact = wandb.Artifact(
            _artifact_name(name), type="dataset", metadata={"hash": content_hash, **metadata}
        )
        artifact.add_file(str(path))
        self.inputs.append(f"dataset:{_artifact_name(name)}:{content_hash}")
        if self.mode == "online":
            self.run.use_artifact(artifact)
        else:
            self.run.log_artifact(artifact)

    def use_model(self, path: str | Path, name: str) -> None:
        """Record an upstream artifact (e.g. the SFT model a reward stage starts from) as an input."""
        if self.run is None or not self.pipeline.tracking.log_artifacts:
            return
        import wandb

        self.inputs.append(f"model:{_artifact_name(name)}:{Path(path).resolve()}")
        if self.mode == "online":
            artifact = wandb.Artifact(_artifact_name(name), type="model")
            artifact.add_reference(Path(path).resolve().as_uri(), checksum=False)
            self.run.use_artifact(artifact)

    def log_model(self, path: str | Path, name: str, metadata: dict[str, Any]) -> None:
        if self.run is None or not self.pipeline.tracking.log_artifacts:
            return
        import wandb

        artifact = wandb.Artifact(
            _artifact_name(name), type="model", metadata={**metadata, "inputs": self.inputs}
        )
        artifact.add_reference(Path(path).resolve().as_uri(), checksum=False)
        self.run.log_artifact(artifact)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def _artifact_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:128]


def log_results(
    *,
    project: str,
    group: str | None,
    job_type: str,
    name: str,
    directory: str | Path,
    config: dict[str, Any],
    summary: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]] | None = None,
    images: dict[str, str | Path] | None = None,
    mode: str = "auto",
) -> str | None:
    """One W&B run for an evaluation or a comparison (not a stage): summary figures, sample tables, plots.
    Returns the run's directory, or None when tracking is disabled."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=project,
        group=group,
        job_type=job_type,
        name=name,
        config=config,
        dir=str(directory),
        mode=mode,
        reinit="create_new",
    )
    try:
        logged: dict[str, Any] = {}
        for key, rows in (tables or {}).items():
            columns = sorted({column for row in rows for column in row})
            logged[key] = wandb.Table(
                columns=columns,
                data=[[_table_cell(row.get(column)) for column in columns] for row in rows],
            )
        for key, path in (images or {}).items():
            logged[key] = wandb.Image(str(path))
        if logged:
            run.log(logged)
        run.summary.update(_flatten(summary))
        return str(run.dir)
    finally:
        run.finish()


def _table_cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif value is None or isinstance(value, (str, int, float, bool)):
            flat[name] = value
    return flat
