"""What goes up and what stays (never a pickle), the upload through `HfApi` in one commit, and the `alignment push`
command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment import artifacts
from alignment.artifacts import ArtifactError
from alignment.hub.card import build_card
from alignment.hub.lineage import HUB_ID, HubError, Node, _short, missing_inputs

# ------------------------------------------------------------------------------------------------ what goes
WEIGHT_FILES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "model.safetensors.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
RECORD_FILES = ("MANIFEST.json", "resolved_config.yaml", "metrics.json", "log_history.json")
REWARD_FILES = ("diagnostics.json", "diagnostics.md", "normalization.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CARD = "README.md"


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class PlannedFile:
    path_in_repo: str
    size: int
    what: str
    source: Path | None = None  # a file of the artifact, or None for generated `content`
    content: bytes | None = None


@dataclass
class UploadPlan:
    repo_id: str
    private: bool
    artifact: Path
    files: list[PlannedFile]
    left_out: list[tuple[str, str]]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def record(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "private": self.private,
            "artifact": str(self.artifact),
            "files": [{"path": f.path_in_repo, "bytes": f.size, "what": f.what} for f in self.files],
            "left_out": [{"path": name, "why": why} for name, why in self.left_out],
            "total_bytes": self.total_bytes,
        }


def classify(name: str) -> str | None:
    """What an artifact file is when it goes up, or None when it stays."""
    if name.endswith(".safetensors"):
        return "weights (safetensors)"
    if name in WEIGHT_FILES:
        return "model config"
    if name in TOKENIZER_FILES:
        return "tokenizer"
    if name in CHAT_TEMPLATE_FILES or name.startswith("additional_chat_templates/"):
        return "chat template"
    if name in RECORD_FILES:
        return "provenance"
    if name in REWARD_FILES:
        return "reward model diagnostics"
    return None


def plan_upload(
    node: Node, repo_id: str, private: bool, card: Any, adapter_repo: str | None = None
) -> UploadPlan:
    """Which files go to `repo_id` and which stay (with why); HubError for an artifact without safe weights."""
    root = node.path
    files: list[PlannedFile] = []
    left_out: list[tuple[str, str]] = []
    pickles: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        name = path.relative_to(root).as_posix()
        if name.endswith(PICKLE_SUFFIXES):
            pickles.append(name)
            left_out.append((name, "a pickle: loading it runs arbitrary code; never uploaded"))
            continue
        if path.is_symlink():
            left_out.append((name, "a symbolic link"))
            continue
        if name == CARD:
            left_out.append((name, "replaced by the generated model card"))
            continue
        if "/" in name and not name.startswith("additional_chat_templates/"):
            left_out.append((name, "in a sub-folder: not part of the published model"))
            continue
        what = classify(name)
        if what is None:
            why = (
                "a local path of the training machine"
                if name == "model_source.json"
                else "not a file push publishes"
            )
            left_out.append((name, why))
            continue
        if name == "adapter_config.json" and adapter_repo:
            config = json.loads(path.read_text())
            before = config.get("base_model_name_or_path")
            if before != adapter_repo:
                config["base_model_name_or_path"] = adapter_repo
                content = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
                files.append(
                    PlannedFile(
                        name,
                        len(content),
                        f"adapter config (base_model_name_or_path {_short(str(before))} -> {adapter_repo})",
                        content=content,
                    )
                )
                continue
        files.append(PlannedFile(name, path.stat().st_size, what, source=path))
    weights = [f.path_in_repo for f in files if f.path_in_repo.endswith(".safetensors")]
    if not weights:
        if pickles:
            raise HubError(
                f"{root} holds its weights only as pickles ({', '.join(pickles)}): loading a pickle runs whatever code "
                "it holds, so push never uploads one. Re-save the model with safetensors "
                "(model.save_pretrained(folder, safe_serialization=True)) and publish that"
            )
        raise HubError(
            f"{root} has no weights to publish (model.safetensors, model-*-of-*.safetensors or "
            "adapter_model.safetensors)"
        )
    content = str(card).encode()
    files.append(PlannedFile(CARD, len(content), "model card (generated)", content=content))
    return UploadPlan(repo_id, private, root, files, left_out)


def describe(plan: UploadPlan, dry_run: bool) -> str:
    visibility = "private" if plan.private else "public"
    header = f"push {plan.artifact} -> {plan.repo_id} ({visibility})"
    lines = [header + ("   [dry run: nothing is uploaded]" if dry_run else "")]
    width = max(len(f.path_in_repo) for f in plan.files)
    lines += [f"  {f.path_in_repo:{width}s} {_size(f.size):>10s}  {f.what}" for f in plan.files]
    lines.append(f"  total {_size(plan.total_bytes)} in {len(plan.files)} files")
    if plan.left_out:
        lines.append("left out:")
        lines += [f"  {name}: {why}" for name, why in plan.left_out]
    return "\n".join(lines)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# ------------------------------------------------------------------------------------------------ push
def push(
    artifact: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    eval_path: str | Path | None = None,
    base_model_override: str | None = None,
    wandb_entity: str | None = None,
    out: str | Path | None = None,
    api: Any = None,
    log: Any = print,
) -> UploadPlan:
    """Build the card and the plan, write both under `out`, and (unless `dry_run`) upload in one commit.

    `api`: an `HfApi` (default: `HfApi()` with huggingface_hub's own token); tests pass a recording fake."""
    if not HUB_ID.match(repo_id):
        raise HubError(f"--repo {repo_id!r}: name a Hub repository as ORG/NAME (or USER/NAME)")
    if not dry_run and api is None:
        api = _hub_api()  # offline or not logged in: said before any work
    card, node, adapter_repo = build_card(artifact, repo_id, eval_path, base_model_override, wandb_entity)
    plan = plan_upload(node, repo_id, private, card, adapter_repo)
    out = Path(out) if out is not None else Path("runs") / "hub" / node.path.name
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD).write_text(str(card))
    log(describe(plan, dry_run))
    for downstream, up in missing_inputs(node):
        log(f"warning: input {up.name} of {downstream.stage}: {up.problem}; the card says so")
    if dry_run:
        artifacts.write_json_atomic(out / "plan.json", plan.record())
        log(
            f"wrote the card and the plan to {out} (README.md, plan.json); run again without --dry-run to upload"
        )
        return plan
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if private and not getattr(api.repo_info(repo_id, repo_type="model"), "private", False):
        raise HubError(
            f"--private: {repo_id} already exists and is public; nothing was uploaded. Make it private on the Hub "
            "or choose another name"
        )
    planned = {f.path_in_repo for f in plan.files}
    stale = [
        name
        for name in api.list_repo_files(repo_id, repo_type="model")
        if name not in planned and name != CARD and classify(name) is not None
    ]
    operations: list[Any] = [
        CommitOperationAdd(
            path_in_repo=f.path_in_repo, path_or_fileobj=f.content if f.content is not None else str(f.source)
        )
        for f in plan.files
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    manifest = node.manifest
    commit = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=f"{node.stage} artifact, config {manifest.get('config_hash', '?')}, manifest {node.manifest_hash}",
        repo_type="model",
    )
    url = getattr(commit, "commit_url", None) or str(commit)
    artifacts.write_json_atomic(out / "plan.json", {**plan.record(), "replaced": stale, "commit": url})
    if stale:
        log(
            f"removed from {repo_id} (an earlier push's files this artifact does not have): {', '.join(stale)}"
        )
    log(f"pushed {len(plan.files)} files to https://huggingface.co/{repo_id}: {url}")
    return plan


def _hub_api() -> Any:
    """huggingface_hub's client with its own token lookup; HubError when offline or not logged in."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            "HF_HUB_OFFLINE is set: unset it to push, or use --dry-run to write the card and the plan only"
        )
    if get_token() is None:
        raise HubError(
            "not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN); nothing uploaded"
        )
    return HfApi()


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "artifact", help="a stage's output folder (with MANIFEST.json), e.g. runs/quickstart/dpo"
    )
    parser.add_argument(
        "--repo", required=True, help="Hub repository ORG/NAME (created when it does not exist)"
    )
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, write the card locally, upload nothing"
    )
    parser.add_argument(
        "--eval", dest="eval_path", help="an eval.json (or its folder) of this artifact for the card"
    )
    parser.add_argument(
        "--base-model",
        help="Hub repo of the base model (needed for an adapter whose base is not a Hub model)",
    )
    parser.add_argument(
        "--wandb-entity", help="W&B entity for the card's run links when the config names none"
    )
    parser.add_argument(
        "--out", help="where the card and plan.json are written (default runs/hub/<artifact name>)"
    )


def main(args: argparse.Namespace) -> int:
    import sys

    from huggingface_hub.errors import HfHubHTTPError

    try:
        push(
            args.artifact,
            args.repo,
            private=args.private,
            dry_run=args.dry_run,
            eval_path=args.eval_path,
            base_model_override=args.base_model,
            wandb_entity=args.wandb_entity,
            out=args.out,
        )
    except (HubError, ArtifactError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (
        HfHubHTTPError
    ) as error:  # the Hub refused (rights, quota, a name taken): its message, no token in it
        print(f"error: the Hub refused the push: {error}", file=sys.stderr)
        return 2
    return 0
