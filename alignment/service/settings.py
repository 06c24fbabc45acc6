"""The service's configuration: one typed dataclass per section, read from an optional YAML file.

    alignment serve --config service.yaml          # every field below; command-line flags win

Defaults give a working single-machine service: SQLite under `$ALIGNMENT_HOME/service/`, snapshots exported
beside it, W&B offline unless an API key is set, no automatic rounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from alignment.config import read_yaml
from alignment.data.snapshot import default_snapshot_dir  # noqa: F401 - where `service:` sources are read
from alignment.schema import ConfigError, coerce


def service_home() -> Path:
    """`$ALIGNMENT_HOME/service` (the same home as the embedded model cache)."""
    home = Path(os.environ.get("ALIGNMENT_HOME", Path.home() / ".cache" / "alignment")).expanduser()
    return home / "service"


def default_db_url() -> str:
    """`$ALIGNMENT_SERVICE_DB`, else a SQLite file under the service home."""
    return os.environ.get("ALIGNMENT_SERVICE_DB") or f"sqlite:///{service_home() / 'service.db'}"


@dataclass
class LimitsConfig:
    """Request limits; each refusal names the limit it hit."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Larger request bodies are refused with 413 on every route, before auth: at once on a Content-Length
    over it, as soon as the count passes it on a chunked body."""
    max_json_depth: int = 32
    """Request bodies nesting arrays/objects deeper than this are refused with 400 before they are parsed."""
    max_batch_pairs: int = 1000
    """Pairs per POST; a larger batch is refused with 413 (split it; `alignment submit` does)."""
    max_retraction_ids: int = 10000
    """Pair ids per retraction or restoration request; more are refused with 413 (split them)."""
    requests_per_second: float = 100.0
    """Per-token sustained request rate (token bucket); over it -> 429 with Retry-After. 0 disables."""
    burst: int = 200
    """Requests a token may send at once before the rate applies."""
    auth_failures_per_minute: int = 20
    """Failed authentications (unknown or revoked token) per client address in 60 s; beyond, that address's
    tokens are refused with 429 and Retry-After without being checked, except tokens that already succeeded
    from it, which go on as usual. 0 disables."""


@dataclass
class RoundsConfig:
    """Alignment rounds: what a round trains and where it runs."""

    pipeline: str = "configs/pipelines/smoke.yaml"
    """Base pipeline YAML: its model, `reward:` and `dpo:`/`ppo:` sections are reused; data come from the snapshot."""
    sft: str = ""
    """The SFT artifact: the first round's starting point and every round's KL reference."""
    policy_stage: str = "dpo"
    """`dpo` or `ppo`."""
    output_dir: str = "runs/rounds"
    """Each round writes `<output_dir>/<dataset>/round-<id>/` (pipeline artifacts, logs, round.yaml)."""
    executor: str = "local"
    """`local` (accelerate launch on this machine) or `slurm` (sbatch)."""
    trigger_new_pairs: int = 0
    """Create a round automatically once this many new accepted pairs arrived since the last one (0: never)."""
    lease_seconds: float = 60.0
    """A worker renews its claim on a round this often x 1/3; a round whose lease lapsed is resumed by another."""
    max_attempts: int = 3
    """Claims of a round whose lease lapsed; after the last one a lapsed lease marks the round failed instead."""
    slurm_template: str = "launch/slurm/service_round.sbatch"
    slurm_options: dict[str, str] = field(default_factory=dict)
    """Extra `#SBATCH --key=value` lines, e.g. {partition: gpu, time: "04:00:00", gpus-per-node: "8"}."""


@dataclass
class ServiceConfig:
    """`alignment serve` / `alignment worker`."""

    db: str = ""
    """SQLAlchemy URL: `sqlite:///path.db` (default under $ALIGNMENT_HOME) or `postgresql+psycopg://...`."""
    host: str = "127.0.0.1"
    port: int = 8600
    snapshot_dir: str = ""
    """Snapshot export root (default `$ALIGNMENT_SERVICE_SNAPSHOTS` or `$ALIGNMENT_HOME/service/snapshots`)."""
    tracking: str = "auto"
    """W&B mode for snapshot artifacts: auto (offline without an API key), online, offline, disabled."""
    wandb_project: str = "alignment"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)

    def __post_init__(self) -> None:
        self.db = self.db or default_db_url()
        self.snapshot_dir = self.snapshot_dir or str(default_snapshot_dir())
        if self.rounds.policy_stage not in ("dpo", "ppo"):
            raise ConfigError(f"rounds.policy_stage must be dpo or ppo, got {self.rounds.policy_stage!r}")
        if self.rounds.executor not in ("local", "slurm"):
            raise ConfigError(f"rounds.executor must be local or slurm, got {self.rounds.executor!r}")
        if self.rounds.max_attempts < 1:
            raise ConfigError(f"rounds.max_attempts must be at least 1, got {self.rounds.max_attempts}")


def load_service_config(path: str | None, **overrides: object) -> ServiceConfig:
    """The YAML file's values (every key checked), then the non-None `overrides` (command-line flags)."""
    raw = read_yaml(path) if path else {}
    for key, value in overrides.items():
        if value is not None:
            raw[key] = value
    return coerce(ServiceConfig, raw, path or "<service flags>", "")
