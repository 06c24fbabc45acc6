"""RLHF with PPO from the SFT artifact against any reward_models spec (the project's own trainer: TRL has none).

The policy starts from `init_from` (the SFT artifact by default), the frozen reference is the same weights (with
LoRA: the policy with its adapter disabled, no second copy), the critic starts from the RM artifact (or from the
policy's init model with a fresh value head), and the reward is `reward_models.load(spec)`: this pipeline's RM
(`reward`), any RM path, `rule:tasks`, `rule:gsm8k`, or a `mix:`. Before optimising against a learned RM the
stage reads its diagnostics and refuses below `ppo.min_rm_accuracy` unless `ppo.force=true`.

Launch:
    accelerate launch --config_file configs/accelerate/zero3.yaml -m alignment.stages.ppo \\
        --config configs/pipelines/quickstart-ppo.yaml ppo.kl_coef=0.1
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from alignment.config import ConfigError, PipelineConfig
from alignment.models import (
    apply_freeze,
    count_parameters,
    load_causal_lm,
    peft_config_for,
    torch_dtype,
)
from alignment.stages.common import (
    StageRun,
    execute,
    resolve_reference,
    save_policy_weights,
    stage_main,
    start_from_init,
)

logger = logging.getLogger("alignment.ppo")

STAGE = "ppo"


def prompt_length_fn(tokenizer: Any):
    """Tokens of a prompt as the policy sees it (chat template with the generation prompt)."""

    def token_length(row: dict[str, Any]) -> int:
        return len(
            tokenizer.apply_chat_template(
                row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False
            )
        )

    return token_length


def resolve_reward_spec(spec: str, pipeline: PipelineConfig) -> tuple[str, list[Path]]:
    """The spec with `reward` replaced by this pipeline's RM artifact, and the learned RM paths it names."""
    reward_dir = str(pipeline.stage_output_dir("reward"))
    spec = spec.strip()
    if spec == "reward":
        spec = reward_dir
    elif spec.startswith("mix:"):
        spec = re.sub(r"(?<=\*)reward(?=\+|$)", reward_dir, spec)
    parts = spec[len("mix:") :].split("+") if spec.startswith("mix:") else [spec]
    learned = [Path(part.partition("*")[2] if "*" in part else part) for part in parts]
    return spec, [path for path in learned if not str(path).startswith("rule:")]


def check_reward_models(paths: list[Path], args: Any, run: StageRun) -> None:
    """Refuse an RM whose held-out accuracy is below the threshold (or that has no diagnostics) unless forced."""
    from reward_models.check import check_good_enough

    for path in paths:
        report = check_good_enough(path, args.min_rm_accuracy, args.force)
        if report:
            logger.info(
                "[%s] reward model %s: held-out accuracy %.3f (threshold %.2f)",
                run.stage,
                path,
                report["accuracy"],
                args.min_rm_accuracy,
            )


def load_reward(spec: str, paths: list[Path], run: StageRun, batch_size: int, prepare: Any = None) -> Any:
    import reward_models
    from alignment import artifacts
    from alignment.precision import inference_dtype

    for index, path in enumerate(paths):
        if artifacts.is_complete(path):
            run.add_input("reward" if index == 0 else f"reward{index}", path)
    dtype = inference_dtype(run.pipeline.model.dtype, run.state.device)  # frozen: bf16 where it is fast
    return reward_models.load(
        spec, batch_size=batch_size, device=run.state.device, prepare=prepare, dtype=dtype
    )


def _critic_source(args: Any, learned: list[Path], init_path: str, policy_tokenizer: Any) -> str:
    """Which weights the critic starts from; the RM only when it reads the policy's token ids."""
    from transformers import AutoTokenizer

    choice = args.value_model
    if choice == "policy":
        return init_path
    if choice not in ("auto", "reward"):
        return choice
    if len(learned) != 1:
        if choice == "reward":
            raise ConfigError("ppo.value_model=reward needs ppo.reward_model to name exactly one learned RM")
        return init_path
    rm_vocab = AutoTokenizer.from_pretrained(learned[0]).get_vocab()
    if rm_vocab != policy_tokenizer.get_vocab():
        if choice == "reward":
            raise ConfigError(
                f"ppo.value_model=reward: the RM at {learned[0]} has another tokenizer than the policy; the critic "
                "reads the policy's tokens. Use value_model: policy"
            )
        logger.info("[ppo] the RM's tokenizer differs from the policy's: critic starts from the policy")
        return init_path
    return str(learned[0])


def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from alignment.rl.ppo_trainer import PPOTrainer

    resume_from, init_path, model_cfg, args, tokenizer = start_from_init(pipeline, run, STAGE)
    tuning = model_cfg.tuning
    rows, _ = run.load_train_eval(args, "prompt", prompt_length_fn(tokenizer))

    spec, learned = resolve_reward_spec(args.reward_model, pipeline)
    check_reward_models(learned, args, run)

    set_seed(args.seed)  # adapters and a fresh value head start the same on every run
    policy = load_causal_lm(model_cfg, init_path, tokenizer)
    apply_freeze(policy, tuning)
    peft_config = peft_config_for(tuning)
    ref_policy = None
    reference_path = resolve_reference(pipeline, run, STAGE, args.reference_from)
    if peft_config is not None:
        import peft

        policy = peft.get_peft_model(policy, peft_config)
    if reference_path is not None or peft_config is None:  # else: the policy with its adapter disabled
        ref_policy = load_causal_lm(model_cfg, reference_path or init_path, tokenizer, frozen=True)

    critic_path = _critic_source(args, learned, init_path, tokenizer)
    critic = AutoModelForSequenceClassification.from_pretrained(
        critic_path,
        num_labels=1,
        dtype=torch_dtype(model_cfg.dtype),
        use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if len(tokenizer) > critic.get_input_embeddings().weight.shape[0]:
        critic.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    critic.config.pad_token_id = tokenizer.pad_token_id
    if args.critic_trainable_last_n_blocks is not None:
        from alignment.config import TuningConfig

        apply_freeze(
            critic, TuningConfig(method="freeze", trainable_last_n_blocks=args.critic_trainable_last_n_blocks)
        )

    trainer = PPOTrainer(
        args=args,
        policy=policy,
        critic=critic,
        ref_policy=ref_policy,
        reward_factory=lambda prepare: load_reward(spec, learned, run, args.reward_batch_size, prepare),
        tokenizer=tokenizer,
        prompts=rows,
        log_fn=_wandb_log(run),
        table_fn=_wandb_table(run),
    )

    trainable, total = count_parameters(trainer.model)
    logger.info(
        "[ppo] policy from %s (%s), critic from %s, reward %s; %d / %d parameters trainable; reference: %s; "
        "%d prompts, %d iterations of %d rollouts (global), %d PPO epochs x %d mini-batches; %s",
        init_path,
        tuning.method,
        critic_path,
        spec,
        trainable,
        total,
        "adapter disabled" if ref_policy is None else f"frozen copy of {reference_path or init_path}",
        len(rows),
        trainer.total_iterations,
        trainer.plan.global_rollout_batch_size,
        args.ppo_epochs,
        trainer.plan.mini_batches_per_epoch,
        "cuda" if torch.cuda.is_available() else "cpu",
    )
    run.model_cfg = model_cfg  # type: ignore[attr-defined]
    return trainer, resume_from


def _wandb_log(run: StageRun) -> Any:
    def log(stats: dict[str, Any], step: int) -> None:
        if run.tracker.run is not None:
            run.tracker.run.log({f"ppo/{k}" if "/" not in k else k: v for k, v in stats.items()}, step=step)

    return log


def _wandb_table(run: StageRun) -> Any:
    def table(rows: list[dict[str, Any]], step: int) -> None:
        if run.tracker.run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        run.tracker.run.log(
            {"samples": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=step
        )

    return table


def _finish(trainer: Any, run: StageRun, metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    policy = trainer.unwrapped.policy  # the actor alone is published, never the critic
    return save_policy_weights(trainer, run, run.model_cfg, policy=policy), {}  # type: ignore[attr-defined]


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    return execute(pipeline, STAGE, build, _finish, force, restart)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
