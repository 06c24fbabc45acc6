"""The `alignment` command.

    alignment configs                                  the shipped configs, by name, with what each runs
    alignment run quickstart [key=value ...] [--from STAGE] [--dry-run]   (a shipped name, or a YAML path)
    alignment run quickstart --slurm [--nodes N --gpus-per-node G --partition P --time T]   (a chain of jobs)
    alignment status runs/quickstart                   each stage's Slurm job and state, its artifact
    alignment stage sft --config configs/pipelines/smoke.yaml [key=value ...]
    alignment models prepare smollm2-135m-instruct
    alignment config show configs/pipelines/smoke.yaml [key=value ...]
    alignment data check --source FILE --kind preference
    alignment rm-check --rm runs/x/reward --data pairs.jsonl
    alignment score --rm rule:tasks --data prompts.jsonl --out scores.jsonl
    alignment eval --policy runs/x/dpo --prompts builtin:tasks --prompts-option split=test --reference runs/x/sft \
        --rm runs/x/reward --gold rule:tasks
    alignment compare quickstart [key=value ...] [--dry-run]
    alignment push runs/quickstart/dpo --repo ORG/NAME [--private] [--dry-run]   (the Hub, with a model card)

Relative paths inside a config are relative to that config file; on the command line (key=value), to the current
directory; `output_dir` and artifact paths (`init_from`, ...) always to the current directory (alignment.config).
A stage run here is a single process; for several processes use
`accelerate launch --config_file configs/accelerate/<dist>.yaml -m alignment.stages.<stage> --config ...`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alignment import __version__

STAGE_MODULES = {
    "sft": "alignment.stages.sft",
    "reward": "alignment.stages.reward",
    "dpo": "alignment.stages.dpo",
    "ppo": "alignment.stages.ppo",
    "grpo": "alignment.stages.grpo",
    "rloo": "alignment.stages.rloo",
}


def _offline_defaults() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignment",
        description="Alignment training for language models: SFT, reward models, DPO and PPO.",
    )
    parser.add_argument("--version", action="version", version=f"alignment {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "configs", help="list the shipped configs: names for run, compare and accelerate_config"
    )

    run = commands.add_parser("run", help="run a pipeline's stages in order, each under accelerate launch")
    run.add_argument("config", help="pipeline YAML, or the name of a shipped one (`alignment configs`)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dpo.beta=0.05")
    run.add_argument("--from", dest="from_stage", help="re-run from this stage (and everything after it)")
    run.add_argument("--dry-run", action="store_true", help="print what would run, and the commands")
    slurm = run.add_argument_group("Slurm", "each stage as a Slurm job, chained with --dependency=afterok")
    slurm.add_argument(
        "--slurm", action="store_true", help="submit the stages to Slurm instead of running here"
    )
    slurm.add_argument("--nodes", type=int, default=1, help="nodes per stage job (default 1)")
    slurm.add_argument(
        "--gpus-per-node", type=int, default=0, help="GPUs per node, one process each (default 0)"
    )
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", help="time limit per stage job, e.g. 04:00:00")
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, e.g. account=proj",
    )

    status = commands.add_parser("status", help="each stage of a run: its Slurm job and state, its artifact")
    status.add_argument("run_dir", metavar="RUN", help="the run's output dir, or its pipeline config")
    status.add_argument("overrides", nargs="*", help="key=value overrides the run was started with")

    stage = commands.add_parser(
        "stage", help="run one stage of a pipeline config in this process", add_help=False
    )
    stage.add_argument("stage_name", choices=sorted(STAGE_MODULES), help="stage to run")
    stage.add_argument("rest", nargs=argparse.REMAINDER)

    models = commands.add_parser("models", help="embedded models: list, prepare")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_sub.add_parser("list", help="list embedded model names and whether they are prepared")
    prepare = models_sub.add_parser(
        "prepare", help="convert an embedded model once into the safetensors cache"
    )
    prepare.add_argument("name")
    prepare.add_argument("--force", action="store_true", help="convert again even if prepared")

    config = commands.add_parser("config", help="validate a pipeline config and print it resolved")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the resolved config and each stage's config hash")
    show.add_argument("path", help="pipeline YAML, or the name of a shipped one")
    show.add_argument("overrides", nargs="*")

    data = commands.add_parser("data", help="convert and validate a data source")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser("check", help="report rows, format and rejects (with file:line) of a source")
    check.add_argument("--source", required=True, help="file, HF dataset dir, hub name or builtin:tasks")
    check.add_argument("--kind", default="sft", choices=["sft", "preference", "prompt", "unpaired"])
    check.add_argument("--format", default="auto")
    check.add_argument("--show", type=int, default=1, help="print this many converted rows")

    commands.add_parser(
        "rm-check", help="diagnostics of a reward model on any pair file: is it good enough?", add_help=False
    ).add_argument("rest", nargs=argparse.REMAINDER)

    score = commands.add_parser(
        "score", help="score (prompt, completion) rows of a file with any reward spec"
    )
    score.add_argument(
        "--rm", required=True, help="RM artifact dir, rule:tasks, rule:gsm8k or mix:w*spec+w*spec"
    )
    score.add_argument("--data", required=True, help="file of prompt/completion rows (any supported format)")
    score.add_argument("--format", default="auto")
    score.add_argument("--out", required=True, help="output JSONL: each input row plus `score`")
    score.add_argument("--batch-size", type=int, default=16)

    from alignment.evaluate import add_arguments as add_eval_arguments

    add_eval_arguments(
        commands.add_parser(
            "eval",
            help="generate on held-out prompts and report RM score, gold score, KL, win rates (95%% CIs)",
        )
    )
    compare = commands.add_parser(
        "compare",
        help="train SFT and the RM once, then every arm of a comparison, evaluate all, write report.md",
    )
    compare.add_argument("config", help="comparison YAML, or the name of a shipped one (`alignment configs`)")
    compare.add_argument("overrides", nargs="*", help="key=value overrides of the comparison config")
    compare.add_argument(
        "--dry-run", action="store_true", help="print the arms and the commands, run nothing"
    )

    from alignment.hub import add_arguments as add_push_arguments

    add_push_arguments(
        commands.add_parser(
            "push", help="publish an artifact to the Hugging Face Hub with a model card from its lineage"
        )
    )
    from alignment.service.cli import add_commands as add_service_commands

    add_service_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["rm-check"]:  # its own parser: options come first, which argparse.REMAINDER would reject
        argv = ["rm-check", "--", *argv[1:]]
    if not argv:
        parser.print_help()
        return 0
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = list(args.overrides) + extra  # key=value after an option: `run X --dry-run a.b=1`
    elif extra and args.command not in ("stage", "rm-check"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "configs":
            return _configs()
        if args.command == "run":
            from alignment.config import find_config, load_pipeline
            from alignment.pipeline import run as run_pipeline
            from alignment.tracking import announce

            path = find_config(args.config, "pipelines")
            pipeline = load_pipeline(path, args.overrides)
            print(announce(pipeline.tracking.mode, pipeline.output_dir), flush=True)
            if args.slurm:
                return _run_slurm(path, args)
            return run_pipeline(path, args.overrides, args.from_stage, args.dry_run)
        if args.command == "status":
            from alignment.slurm import status

            return status(args.run_dir, args.overrides)
        if args.command == "stage":
            module = importlib.import_module(STAGE_MODULES[args.stage_name])
            return int(module.main(args.rest) or 0)
        if args.command == "models":
            return _models(args)
        if args.command == "config":
            return _config_show(args)
        if args.command == "data":
            return _data_check(args)
        if args.command == "rm-check":
            from reward_models.check import main as rm_check

            return rm_check([a for i, a in enumerate(args.rest) if not (i == 0 and a == "--")])
        if args.command == "score":
            return _score(args)
        if args.command == "eval":
            from alignment.evaluate import main as run_eval

            return run_eval(args)
        if args.command == "compare":
            from alignment.compare import load_compare
            from alignment.compare import run as run_compare
            from alignment.config import find_config, load_pipeline
            from alignment.tracking import announce

            path = find_config(args.config, "compare")
            config = load_compare(path, args.overrides)
            mode = load_pipeline(config.pipeline, config.pipeline_overrides).tracking.mode
            print(announce(mode, config.output_dir, nested=True), flush=True)
            return run_compare(path, args.overrides, args.dry_run)
        if args.command == "push":
            from alignment.hub import main as run_push

            return run_push(args)
        from alignment.service.cli import COMMANDS as SERVICE_COMMANDS

        if args.command in SERVICE_COMMANDS:
            from alignment.service.cli import run as run_service

            return run_service(args)
    except (ValueError, RuntimeError) as error:  # ConfigError, DataError, ArtifactError: user-facing
        from alignment.artifacts import ArtifactError
        from alignment.config import ConfigError
        from alignment.data import DataError
        from alignment.evaluate import EvalError
        from alignment.finite import NonFiniteError
        from alignment.generation import GenerationError

        if isinstance(
            error, (ConfigError, DataError, ArtifactError, EvalError, GenerationError, NonFiniteError)
        ):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
    parser.print_help()
    return 0


def _configs() -> int:
    from alignment.config import configs_dir, shipped_configs

    usage = {
        "pipelines": "alignment run NAME",
        "compare": "alignment compare NAME",
        "accelerate": "accelerate_config: NAME",
    }
    for kind, how in usage.items():
        print(f"{kind} ({how}):")
        for name, (_, description) in shipped_configs(kind).items():
            print(f"  {name:40s} {description}")
    print(f"folder: {configs_dir()}")
    return 0


def _run_slurm(path: object, args: argparse.Namespace) -> int:
    from alignment.slurm import SlurmError, SlurmOptions, parse_sbatch_options, submit

    options = SlurmOptions(
        args.nodes, args.gpus_per_node, args.partition, args.time, parse_sbatch_options(args.sbatch)
    )
    try:
        return submit(path, args.overrides, args.from_stage, args.dry_run, options)
    except SlurmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _models(args: argparse.Namespace) -> int:
    from alignment.models import EMBEDDED_MODELS, embedded_model_dir, prepare_embedded

    if args.models_command == "list":
        for name, description in EMBEDDED_MODELS.items():
            ready = (embedded_model_dir(name) / "PREPARED").is_file()
            print(f"{name:24s} {'prepared' if ready else 'not prepared':13s} {description}")
        return 0
    path = prepare_embedded(args.name, force=args.force)
    print(path)
    return 0


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from alignment.config import config_hash, load_pipeline

    pipeline = load_pipeline(args.path, args.overrides)
    print(yaml.safe_dump(pipeline.resolved(), sort_keys=False), end="")
    for stage in pipeline.stage_sections:
        print(f"# {stage} config hash: {config_hash(pipeline, stage)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from alignment.data import DataConfig, load

    result = load(DataConfig(source=args.source, format=args.format), args.kind)
    reasons = Counter(reject.reason for reject in result.rejects)
    print(f"source: {result.source}\nformat: {result.format}\nrows: {len(result.rows)} of {result.total}")
    print(f"rejected: {len(result.rejects)} ({result.reject_fraction():.2%})")
    for reason, count in reasons.most_common():
        print(f"  {reason}: {count}")
    for reject in result.rejects[:10]:
        print(f"  {reject.source}:{reject.line}: {reject.reason}: {reject.detail}")
    for row in result.rows[: args.show]:
        print(json.dumps(row, ensure_ascii=False)[:2000])
    return 0


def _score(args: argparse.Namespace) -> int:
    import json

    import reward_models
    from alignment.data import DataConfig, load_checked

    rm_kwargs = {"batch_size": args.batch_size} if not args.rm.startswith(("rule:", "mix:")) else {}
    rm = reward_models.load(args.rm, **rm_kwargs)
    rows = load_checked(DataConfig(source=args.data, format=args.format), "sft").rows
    prompts = [row["prompt"] for row in rows]
    completions = [row["completion"][-1]["content"] for row in rows]
    golds = [row.get("gold") for row in rows]
    scores = rm.score(prompts, completions, golds if all(golds) else None)
    with open(args.out, "w") as handle:
        for row, value in zip(rows, scores.tolist(), strict=True):
            handle.write(json.dumps({**row, "score": value}, ensure_ascii=False) + "\n")
    print(f"scored {len(rows)} rows with {args.rm}: mean {scores.mean().item():.4f} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
