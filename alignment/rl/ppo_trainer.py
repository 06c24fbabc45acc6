"""The project's actor-critic PPO for language models (TRL removed its PPOTrainer in 1.13).

One iteration:
    1. rollout   the generation engine (`alignment.generation`, backend `hf` or `vllm`) samples a completion
                 per prompt. `hf` decodes with the training policy (weights gathered once under ZeRO-3, never
                 token-by-token over shards) and keeps each sampled token's log-prob from the logits it was
                 drawn from, divided by the sampling temperature (checked once per run against a full forward
                 pass; `logprobs_from_generation: false` recomputes them). `vllm` decodes with its own copy of
                 the weights (synced after every update); the trainer recomputes the log-probs it optimises,
                 logs the engine/trainer mismatch, and optionally weighs tokens by the capped ratio (truncated
                 importance sampling). Reference log-probs and values take one forward each;
    2. score     the reward (any `reward_models` spec: a learned RM with its own tokenizer, a rule, a mix) scores
                 the decoded text; responses that never emit EOS are penalised;
    3. advantage per-token reward = -kl_coef * KL(pi || ref) + score at the last token; GAE(gamma, lambda);
                 advantages whitened over the global batch (all processes);
    4. update    `ppo_epochs` passes over the rollouts in shuffled mini-batches: clipped policy ratio, clipped
                 value loss, one optimiser over policy and critic (one DeepSpeed engine).
The KL coefficient is fixed or follows Ziegler et al.'s adaptive controller. The arithmetic lives in
`alignment.rl.ppo_math` (pure functions, unit-tested).

This is a plain Accelerate loop rather than a `transformers.Trainer` subclass: PPO's rollout -> several epochs
-> next rollout cycle does not map onto Trainer's one-batch-one-step loop without hiding the algorithm. It keeps
the surface the stage lifecycle needs (`train`, `save_model`, `state.log_history`), and its checkpoints hold
everything an exact resume needs: weights, optimiser, KL-controller state, iteration and data position (the
sampling seeds are functions of the iteration). A resume on another number of processes (a requeue onto another
node count) carries all of it over and continues the prompt stream where the checkpoint stopped; only DeepSpeed's
per-process ZeRO shards cannot be read by another count, and that resume is refused with what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignment import artifacts
from alignment import progress as alignment_progress  # `progress` is the tqdm bar in train()
from alignment.finite import NonFiniteError, failure_message, non_finite
from alignment.generation import GenerationConfig, Sampling, create_engine, resolve_backend
from alignment.rl import ppo_math as pm
from alignment.rl.packing import PackedRows, pack_rows, use_segment_attention
from alignment.rl.ppo_math import gather_response_logprobs, position_ids_from

logger = logging.getLogger("alignment.ppo")

STATE_FILE = "ppo_state.json"
Keep = int | torch.Tensor
"""`logits_to_keep`: the last N positions (0: all), or the positions themselves."""


def frozen_trunk_blocks(critic: nn.Module) -> int:
    """How many leading decoder blocks of the critic's backbone nothing trains (its embeddings frozen too): their
    output is the same in the rollout and in every PPO epoch. 0 when the backbone has no `layers` list."""
    backbone = getattr(critic, getattr(critic, "base_model_prefix", ""), None)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or backbone is None:
        return 0
    embeddings = backbone.get_input_embeddings()
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return 0
    blocks = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        blocks += 1
    return blocks


class PolicyAndValue(nn.Module):
    """Policy (causal LM, possibly a PEFT model) and critic (sequence-classification model used per token) in
    one module, so that one optimiser and one DeepSpeed engine hold both.

    With `trunk_blocks` = K > 0 the critic's first K blocks are frozen and their output (`trunk`, the hidden
    states entering block K) can be kept: a pass given `trunk` runs only the blocks after it (the backbone's
    forward over the remaining blocks, with `trunk` in place of the token embeddings).
    """

    def __init__(self, policy: nn.Module, critic: nn.Module, trunk_blocks: int = 0) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.trunk_blocks = trunk_blocks

    # Generation helpers (TRL's unwrap_model_for_generation) switch activation checkpointing off and on again.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_activation_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        for model in (self.policy, self.critic):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for model in (self.policy, self.critic):
            model.gradient_checkpointing_disable()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        with_values: bool = True,
        logits_to_keep: Keep = 0,
        trunk: torch.Tensor | None = None,
        keep_trunk: bool = False,
        with_logits: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Policy logits of the last `logits_to_keep` positions (0: all; a tensor: those positions), the critic's
        value at every position, and (`keep_trunk`) the critic's hidden states entering its first trained block.
        `attention_kwargs`: the sequence bounds of a packed row (`packing.PackedRows`), whose `attention_mask` is
        None."""
        extra = attention_kwargs or {}
        logits = None
        if with_logits:
            keep = logits_to_keep
            if isinstance(keep, int):
                keep = pm.last_positions(input_ids.shape[1], keep, input_ids.device)
            logits = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=keep,
                **extra,
            ).logits
        if not with_values:
            return logits, None, None
        backbone = getattr(self.critic, self.critic.base_model_prefix)
        kept: list[torch.Tensor] = []
        if trunk is not None:
            layers = backbone.layers
            backbone.layers = nn.ModuleList(list(layers)[self.trunk_blocks :])
            try:
                hidden = backbone(
                    inputs_embeds=trunk,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                    **extra,
                ).last_hidden_state
            finally:
                backbone.layers = layers
        else:
            hook = None
            if keep_trunk and self.trunk_blocks:

                def keep(_module: nn.Module, _args: Any, output: Any) -> None:
                    kept.append((output[0] if isinstance(output, tuple) else output).detach())

                hook = backbone.layers[self.trunk_blocks - 1].register_forward_hook(keep)
            try:
                hidden = backbone(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                    **extra,
                ).last_hidden_state
            finally:
                if hook is not None:
                    hook.remove()
        values = self.critic.score(hidden).squeeze(-1)
        return logits, values, (kept[0] if kept else None)


@dataclass
class Rollout:
    """One iteration's samples on this process; tensors (B, ...) on the accelerator's device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    query_length: int
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor | None
    ended: torch.Tensor
    prompts: list[Any]
    completions: list[str]
    critic_trunk: torch.Tensor | None = None
    """(B, T, hidden): the critic's frozen blocks' output, kept for the PPO epochs (None: not cached)."""
    token_weights: torch.Tensor | None = None
    """(B, T): truncated importance-sampling weights min(pi_trainer / pi_engine, cap) (None: no correction)."""
    engine_stats: dict[str, float] = field(default_factory=dict)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerState:
    iteration: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    data_position: pm.DataPosition = field(default_factory=pm.DataPosition)
    """Where the next iteration's prompts start (see `PPOTrainer._prompt_rows`)."""


@dataclass
class MicroBatch:
    """Rows of a rollout without the columns that are padding in every one of them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    query_length: int
    """Prompt columns kept (the responses start here)."""
    width: int
    """Response columns kept: the longest response among these rows."""

    # The same interface as `packing.PackedRows`, the padding-free layout: the passes take either.
    @property
    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.input_ids, self.attention_mask, self.position_ids

    @property
    def attention_kwargs(self) -> dict[str, Any]:
        return {}

    @property
    def keep(self) -> torch.Tensor:
        """`logits_to_keep`: the last width + 1 positions (those that predict the response, and the last), as an
        index tensor (`ppo_math.last_positions`)."""
        keep = pm.last_positions(self.input_ids.shape[1], self.width + 1, self.input_ids.device)
        assert isinstance(keep, torch.Tensor)  # width + 1 > 0 positions
        return keep

    @property
    def real(self) -> torch.Tensor:
        return self.attention_mask.bool()

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.query_length :]

    def response_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The kept logits (B, width + 1, V) -> (B, width, V), those that predict the response columns."""
        return logits[:, :-1]

    def response_values(self, values: torch.Tensor) -> torch.Tensor:
        """Values at every position (B, T) -> (B, width), the critic's estimate before each response column."""
        return values[:, self.query_length - 1 : -1]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Already (B, width)."""
        return values

    def gather(self, grid: torch.Tensor) -> torch.Tensor:
        """Already aligned with the micro-batch."""
        return grid

    def ungather(self, aligned: torch.Tensor) -> torch.Tensor:
        return aligned


def micro_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    query_length: int,
    index: torch.Tensor,
) -> MicroBatch:
    """Rows `index` of left-padded prompts + right-padded responses, cut to the columns some row uses.

    Attention and positions of every real token are unchanged (padding is masked and positions come from the
    full mask), so the outputs at kept positions are those of the full-width pass; each forward and backward
    costs in proportion to the columns it keeps. Passes over rows of similar lengths keep the fewest.
    """
    mask = attention_mask[index]
    all_pad = (mask[:, :query_length] == 0).all(dim=0)
    lead = min(int(all_pad.int().cumprod(dim=0).sum()), query_length - 1)
    width = max(1, int(mask[:, query_length:].sum(dim=1).max()))
    end = query_length + width
    return MicroBatch(
        input_ids=input_ids[index][:, lead:end],
        attention_mask=mask[:, lead:end],
        position_ids=position_ids[index][:, lead:end],
        query_length=query_length - lead,
        width=width,
    )


def _pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    return trl_entropy(logits)


class PPOTrainer:
    """Actor-critic PPO over Accelerate (DDP or DeepSpeed ZeRO-2/3); see the module docstring."""

    def __init__(
        self,
        args: Any,
        policy: nn.Module,
        critic: nn.Module,
        ref_policy: nn.Module | None,
        reward_factory: Callable[[Callable[[nn.Module], Any] | None], Any],
        tokenizer: Any,
        prompts: Sequence[dict[str, Any]],
        log_fn: Callable[[dict[str, Any], int], None] | None = None,
        table_fn: Callable[[list[dict[str, Any]], int], None] | None = None,
    ) -> None:
        """`ref_policy`: a frozen copy of the initial policy, or None when the policy is a PEFT model (the
        reference is then the policy with its adapter disabled). `reward_factory(prepare)` builds the reward;
        `prepare` (None unless ZeRO-3) shards a frozen model the reward loads, as the reference is sharded."""
        from accelerate import Accelerator
        from accelerate.utils import GradientAccumulationPlugin
        from trl.trainer.utils import disable_dropout_in_model

        self.args = args
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.log_fn = log_fn
        self.table_fn = table_fn
        self.eval_dataset = None
        self.state = TrainerState()
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("ppo: the policy tokenizer needs a pad token and an EOS token")

        # No `cpu=` here: the stage's PartialState already chose the device, and cpu=True would turn DeepSpeed
        # off while ZeRO-3's partitioned loading is on (as transformers' Trainer, pass only the plugin).
        self.accelerator = Accelerator(
            mixed_precision="bf16" if args.bf16 else "no",
            deepspeed_plugin=args.deepspeed_plugin,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
            ),
        )
        self.deepspeed = self.accelerator.state.deepspeed_plugin is not None
        self.zero3 = self.deepspeed and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        if self.deepspeed:
            from transformers.integrations.deepspeed import propagate_args_to_deepspeed

            propagate_args_to_deepspeed(self.accelerator, args)
        self.plan = pm.plan_batches(
            args.rollout_batch_size,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            self.accelerator.num_processes,
        )
        if len(self.prompts) < self.plan.global_rollout_batch_size:
            raise ValueError(
                f"ppo: {len(self.prompts)} prompts but one iteration needs {self.plan.global_rollout_batch_size} "
                f"(ppo.rollout_batch_size={args.rollout_batch_size} x {self.accelerator.num_processes} processes)"
            )
        self.total_iterations = self._total_iterations()
        updates = self.total_iterations * args.ppo_epochs * self.plan.mini_batches_per_epoch

        for module in (policy, critic, ref_policy):
            if module is not None:
                disable_dropout_in_model(module)  # N+ details: dropout off, or log-probs are not reproducible
        self.padding_free = bool(getattr(args, "padding_free", True))
        if self.padding_free:
            switched = [
                use_segment_attention(
                    module.get_base_model() if hasattr(module, "get_base_model") else module
                )
                for module in (policy, critic, ref_policy)
                if module is not None
            ]
            logger.info(
                "[ppo] padding-free passes: each micro-batch's sequences packed into one row%s",
                ", attention per sequence (sdpa_segments)" if any(switched) else "",
            )
        # The critic's frozen leading blocks compute the same activations in the rollout and every epoch: keep
        # them (not under ZeRO-3, whose blocks are sharded and fetched by hooks).
        trunk_blocks = 0
        if getattr(args, "cache_critic_trunk", True) and not self.zero3:
            trunk_blocks = frozen_trunk_blocks(critic)
        self.trunk_checked = False
        self.logged_folding = False
        self.use_generation_logprobs = bool(getattr(args, "logprobs_from_generation", True))
        self.generation_logprobs_checked = False
        # the check's mean |diff| per token, once it was made
        self.generation_logprob_difference: float | None = None
        if trunk_blocks:
            logger.info(
                "[ppo] the critic's first %d blocks are frozen: their output is kept from the rollout for the "
                "PPO epochs (cache_critic_trunk)",
                trunk_blocks,
            )
        model = PolicyAndValue(policy, critic, trunk_blocks)
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(updates),
            num_training_steps=updates,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ref_policy = self.prepare_frozen(ref_policy) if ref_policy is not None else None
        self.reward = reward_factory(self.prepare_frozen if self.zero3 else None)
        self.kl_controller: pm.FixedKLController | pm.AdaptiveKLController = (
            pm.AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
            if args.adaptive_kl
            else pm.FixedKLController(args.kl_coef)
        )
        self.generation = getattr(args, "generation", None) or GenerationConfig()
        backend = resolve_backend(self.generation, self.accelerator.device)
        if backend == "vllm":
            # The engine's log-probs come from other kernels (and maybe another dtype): the update's old
            # log-probs are the trainer's own, recomputed after generation.
            self.use_generation_logprobs = False
        elif self.unwrapped.policy.dtype != torch.float32:
            # bf16 decoding with a KV cache against the update's full forward passes: mean |diff| 0.044 per token
            # on SmolLM2 (AMX), too close to the check's tolerance to keep; recompute, as for vllm.
            self.use_generation_logprobs = False
        # `hf` decodes with the live policy; `vllm` copies its whole (gathered under ZeRO-3) weights in once here.
        whole = self._whole_policy() if backend == "vllm" else contextlib.nullcontext(self.unwrapped.policy)
        with whole as policy:
            self.engine = create_engine(
                self.generation,
                policy,
                tokenizer,
                self.accelerator.device,
                backend=backend,
                max_model_len=getattr(args, "max_length", None) or None,
                seed=args.seed,
                fold_adapter=bool(getattr(args, "fold_adapter_for_generation", True)) and not self.zero3,
            )
        logger.info("[ppo] generation backend: %s", self.engine.backend)

    # ------------------------------------------------------------------------------------------------ plumbing
    def _total_iterations(self) -> int:
        if self.args.max_steps and self.args.max_steps > 0:
            return int(self.args.max_steps)
        per_epoch = len(self.prompts) // self.plan.global_rollout_batch_size
        return max(1, int(per_epoch * self.args.num_train_epochs))

    def prepare_frozen(self, module: nn.Module) -> Any:
        """A frozen model beside the trained one: its own DeepSpeed engine under ZeRO-3 (sharded, as TRL does
        for references), else moved to this process's device."""
        module.requires_grad_(False)
        module.eval()
        if self.zero3:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(module, self.accelerator)
        return module.to(self.accelerator.device)

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.contiguous(), reduction="sum")

    def _on_any_process(self, flag: torch.Tensor) -> bool:
        """True when `flag` (a boolean scalar) is true on at least one process: every process then takes the
        same branch of a once-per-run check."""
        return float(self._all_reduce(flag.float().reshape(1)).sum()) > 0

    def _global_mean(self, tensor: torch.Tensor) -> float:
        count = torch.tensor(float(tensor.numel()), device=tensor.device)
        stats = self._all_reduce(torch.stack([tensor.float().sum(), count]))
        return float(stats[0] / stats[1].clamp_min(1.0))

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        stats = self._all_reduce(torch.stack([(values.float() * mask).sum(), mask.float().sum()]))
        return float(stats[0] / stats[1].clamp_min(1.0))

    def _all_max(self, value: torch.Tensor) -> float:
        if self.accelerator.num_processes == 1:
            return float(value)
        return float(self.accelerator.reduce(value.float().reshape(1).contiguous(), reduction="max")[0])

    def _prompt_rows(self, position: pm.DataPosition) -> list[dict[str, Any]]:
        """This process's prompts for the global batch that starts at `position`: a fixed permutation per pass over
        the data, each process taking its slice of the batch (exact resume needs only the position)."""
        start = position.next_batch(self.plan.global_rollout_batch_size, len(self.prompts))
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + start.data_pass)
        order = torch.randperm(len(self.prompts), generator=generator).tolist()
        first = start.offset + self.accelerator.process_index * self.plan.rollout_batch_size
        return [self.prompts[i] for i in order[first : first + self.plan.rollout_batch_size]]

    def _seed(self, iteration: int, salt: int = 0) -> int:
        return (self.args.seed * 7919 + iteration) * 1009 + self.accelerator.process_index * 31 + salt

    # ------------------------------------------------------------------------------------------------- rollout
    def _forward_in_chunks(
        self,
        forward: Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
        batch: dict[str, torch.Tensor],
        query_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Response log-probs (zeros when `forward` gives no logits), values and the critic's trunk output (when
        `forward` gives them), full width, in micro-batches of rows sorted by length and cut to their own longest
        response (`micro_batch`), each packed into one row when `padding_free`; `forward` returns the logits of the
        positions `keep` (those that predict the response tokens; an int: the last `keep`)."""
        rows, full = batch["input_ids"].shape
        width = full - query_length
        order = torch.argsort(batch["attention_mask"].sum(dim=1), stable=True)
        logprobs = torch.zeros(rows, width, device=batch["input_ids"].device)
        values: torch.Tensor | None = None
        trunk: torch.Tensor | None = None
        size = self.args.per_device_train_batch_size
        for start in range(0, rows, size):
            index = order[start : start + size]
            part = micro_batch(
                batch["input_ids"], batch["attention_mask"], batch["position_ids"], query_length, index
            )
            layout = self._layout(part, part.attention_mask[:, part.query_length :])
            logits, value, part_trunk = forward(
                *layout.model_inputs, keep=layout.keep, attention_kwargs=layout.attention_kwargs
            )
            if logits is not None:
                part_logprobs = gather_response_logprobs(
                    layout.response_logits(logits), layout.response_ids, self.args.temperature
                )
                logprobs[index] = _pad_columns(layout.scatter(part_logprobs), width)
            if value is not None:
                if values is None:
                    values = torch.zeros(rows, width, device=logprobs.device)
                values[index] = _pad_columns(layout.scatter(layout.response_values(value).float()), width)
            if part_trunk is not None:
                assert value is not None
                if not self.trunk_checked:
                    self._check_trunk(layout, value, part_trunk)
                part_trunk = layout.ungather(part_trunk)  # back to the micro-batch's grid, zeros at padding
                if trunk is None:
                    trunk = part_trunk.new_zeros(rows, full, part_trunk.shape[-1])
                lead = query_length - part.query_length
                trunk[index, lead : lead + part_trunk.shape[1]] = part_trunk
        return logprobs, values, trunk

    def _check_trunk(
        self, layout: MicroBatch | PackedRows, values: torch.Tensor, trunk: torch.Tensor
    ) -> None:
        """Once per run: the critic's values from the kept trunk must equal the full pass's (`values`, over
        `layout`'s inputs), or caching is turned off (on every process) with a warning (a backbone whose forward
        does more than embed + blocks)."""
        self.trunk_checked = True
        _, cached, _ = self.model(
            *layout.model_inputs, trunk=trunk, with_logits=False, attention_kwargs=layout.attention_kwargs
        )
        real = layout.real
        error = (cached.float() - values.float())[real].abs().max()
        tolerance = 1e-3 * (1.0 + values.float()[real].abs().max())
        failed = self._on_any_process(error > tolerance)
        logger.info(
            "[ppo] critic values from the kept frozen blocks vs the full pass: max |diff| %.3g (tolerance %.3g)",
            float(error),
            float(tolerance),
        )
        if failed:
            logger.warning(
                "ppo: the critic's values from its kept frozen blocks differ from the full pass (max |diff| %.3g); "
                "running the whole critic in every epoch instead (cache_critic_trunk off)",
                float(error),
            )
            self.unwrapped.trunk_blocks = 0

    def _check_generation_logprobs(
        self, batch: dict[str, torch.Tensor], query_length: int, sampled: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Once per run: the log-probs kept while sampling must match a full forward pass's (same weights, same
        temperature), or every later rollout recomputes them (on every process) with a warning: a backbone whose
        cached decoding differs from its full pass, or generation settings that reshape the distribution.
        Returns the log-probs this rollout uses."""
        self.generation_logprobs_checked = True
        recomputed = self._forward_in_chunks(self._policy_only, batch, query_length)[0]
        real = mask.bool()
        difference = (sampled - recomputed)[real].abs()
        mean = difference.mean() if difference.numel() else difference.new_zeros(())
        # Mean |diff| per token: a wrong temperature or a filtered distribution moves it by tenths of a nat; the
        # numerical noise of cached decoding was 4e-6 in fp32 on SmolLM2 (bf16's is larger, not measured here).
        failed = self._on_any_process(mean > self.args.generation_logprob_tolerance)
        self.generation_logprob_difference = float(mean)
        logger.info(
            "[ppo] log-probs kept while sampling vs a full forward pass: mean |diff| %.3g, max %.3g per token",
            float(mean),
            float(difference.max()) if difference.numel() else 0.0,
        )
        if failed:
            logger.warning(
                "ppo: the log-probs kept while sampling differ from a full forward pass's (mean |diff| %.3g per "
                "token > generation_logprob_tolerance %.3g); recomputing them with a forward pass from now on",
                float(mean),
                self.args.generation_logprob_tolerance,
            )
            self.use_generation_logprobs = False
            return recomputed
        return sampled

    # Each forward returns the logits of the last response_length + 1 positions only: the LM head over the prompt
    # positions (a 576 x 49k matmul per token for SmolLM2) would be computed and thrown away.
    def _policy_and_values(
        self, *inputs: torch.Tensor | None, keep: torch.Tensor, **extra: Any
    ) -> tuple[torch.Tensor, ...]:
        return self.model(*inputs, with_values=True, logits_to_keep=keep, keep_trunk=True, **extra)

    def _policy_only(
        self, *inputs: torch.Tensor | None, keep: torch.Tensor, **extra: Any
    ) -> tuple[torch.Tensor, ...]:
        return self.model(*inputs, with_values=False, logits_to_keep=keep, **extra)

    def _values_only(
        self, *inputs: torch.Tensor | None, keep: torch.Tensor, **extra: Any
    ) -> tuple[torch.Tensor, ...]:
        return self.model(*inputs, with_logits=False, keep_trunk=True, **extra)

    def _reference(
        self, *inputs: torch.Tensor | None, keep: torch.Tensor, attention_kwargs: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, None, None]:
        input_ids, attention_mask, position_ids = inputs
        assert self.ref_policy is not None
        output = self.ref_policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=keep,
            **(attention_kwargs or {}),
        )
        return output.logits, None, None

    def _reference_logprobs(self, batch: dict[str, torch.Tensor], query_length: int) -> torch.Tensor:
        if self.ref_policy is not None:
            return self._forward_in_chunks(self._reference, batch, query_length)[0]
        with (
            self.unwrapped.policy.disable_adapter()
        ):  # LoRA: the SFT policy is the policy without its adapter
            return self._forward_in_chunks(self._policy_only, batch, query_length)[0]

    @contextlib.contextmanager
    def _whole_policy(self) -> Iterator[nn.Module]:
        """The policy with whole weights, to decode with or to copy into an engine: under ZeRO-3 its shards are
        gathered once (the critic's are not) and DeepSpeed's per-module fetch hooks are lifted meanwhile, so
        decoding never fetches shards token by token; gradient checkpointing is off (decoding needs the KV
        cache)."""
        policy = self.unwrapped.policy
        checkpointing = self.unwrapped.is_gradient_checkpointing
        if checkpointing:
            self.unwrapped.gradient_checkpointing_disable()
        try:
            if not self.zero3:
                yield policy
                return
            import deepspeed
            from trl.models.utils import add_hooks, remove_hooks

            with deepspeed.zero.GatheredParameters(list(policy.parameters())):
                remove_hooks(self.model)
                try:
                    yield policy
                finally:
                    add_hooks(self.model)
        finally:
            if checkpointing:
                self.unwrapped.gradient_checkpointing_enable()

    @torch.no_grad()
    def rollout(self, rows: Sequence[dict[str, Any]], iteration: int) -> Rollout:
        device = self.accelerator.device
        tok = self.tokenizer
        timings: dict[str, float] = {}
        started = time.perf_counter()
        prompts = [row["prompt"] for row in rows]
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        tok.padding_side = "left"
        query = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        query_length = query["input_ids"].shape[1]

        self.model.eval()
        sampling = Sampling(self.args.max_new_tokens, self.args.temperature, self._seed(iteration))
        on_engine = self.engine.backend != "hf"
        if on_engine:
            generated = self.engine.generate(query["input_ids"], query["attention_mask"], sampling, True)
        else:
            with self._whole_policy():
                generated = self.engine.generate(
                    query["input_ids"], query["attention_mask"], sampling, self.use_generation_logprobs
                )
            if getattr(self.engine, "folded", False) and not self.logged_folding:
                self.logged_folding = True
                logger.info("[ppo] generating with the LoRA adapter folded into the weights")
        response = generated.response
        mask, ended = pm.response_mask(response, tok.eos_token_id)
        # Every later pass costs in proportion to the sequence length: cut the columns past the longest response.
        width = max(1, int(mask.sum(dim=1).max().item()))
        response, mask = response[:, :width], mask[:, :width]
        kept = generated.logprobs[:, :width] if generated.logprobs is not None else None
        # On an engine, its log-probs only measure the mismatch: the trainer's own drive the update and the KL.
        engine_logprobs, sampled_logprobs = (kept, None) if on_engine else (None, kept)
        response = torch.where(mask.bool(), response, torch.full_like(response, tok.pad_token_id))
        attention_mask = torch.cat([query["attention_mask"], mask.long()], dim=1)
        batch = {
            "input_ids": torch.cat([query["input_ids"], response], dim=1),
            "attention_mask": attention_mask,
            "position_ids": position_ids_from(attention_mask),
        }
        timings["generation"] = time.perf_counter() - started

        started = time.perf_counter()
        if sampled_logprobs is None:
            logprobs, values, trunk = self._forward_in_chunks(self._policy_and_values, batch, query_length)
        else:
            _, values, trunk = self._forward_in_chunks(self._values_only, batch, query_length)
            logprobs = sampled_logprobs
            if not self.generation_logprobs_checked:
                logprobs = self._check_generation_logprobs(batch, query_length, sampled_logprobs, mask)
        if not self.unwrapped.trunk_blocks:
            trunk = None  # the check turned caching off
        token_weights, engine_stats = None, {}
        if engine_logprobs is not None:
            token_weights, engine_stats = self._engine_mismatch(logprobs, engine_logprobs, mask)
        ref_logprobs = self._reference_logprobs(batch, query_length)
        assert values is not None
        timings["forward"] = time.perf_counter() - started

        started = time.perf_counter()
        without_eos = torch.where(response == tok.eos_token_id, tok.pad_token_id, response)
        completions = [text.strip() for text in tok.batch_decode(without_eos, skip_special_tokens=True)]
        golds = [row.get("gold") for row in rows]
        raw_scores = None
        if hasattr(self.reward, "normalize"):  # a learned RM: log its raw score too
            raw_scores = self.reward.raw_score(prompts, completions).to(device)
            scores = self.reward.normalize(raw_scores)
        else:
            scores = self.reward.score(prompts, completions, golds).to(device)
        scores = pm.apply_missing_eos_penalty(scores.float(), ended, self.args.missing_eos_penalty)
        timings["scoring"] = time.perf_counter() - started
        return Rollout(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            query_length=query_length,
            mask=mask,
            logprobs=logprobs * mask,
            ref_logprobs=ref_logprobs * mask,
            values=values * mask,
            critic_trunk=trunk,
            token_weights=token_weights,
            engine_stats=engine_stats,
            scores=scores,
            raw_scores=raw_scores,
            ended=ended,
            prompts=prompts,
            completions=completions,
            timings=timings,
        )

    def _engine_mismatch(
        self, logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """How far the engine's sampling distribution is from the trainer's on the drawn tokens, and (with
        `generation.importance_sampling_cap`) the truncated importance-sampling weights min(pi_trainer /
        pi_engine, cap) per token (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
        RL training"; TRL GRPO's `vllm_importance_sampling_correction`)."""
        real = mask.bool()
        log_ratio = (logprobs.float() - engine_logprobs.float()) * mask
        ratio = torch.exp(log_ratio)
        stats = {
            "generation/engine_logprob_mean_abs_diff": self._global_masked_mean(log_ratio.abs(), mask),
            "generation/engine_logprob_max_abs_diff": float(
                self._all_max(log_ratio.abs()[real].max() if real.any() else log_ratio.new_zeros(()))
            ),
            # k3 estimate of KL(engine || trainer) per token, from the engine's own samples
            "generation/engine_trainer_kl": self._global_masked_mean(ratio - 1 - log_ratio, mask),
        }
        cap = self.generation.importance_sampling_cap
        if cap is None:
            return None, stats
        weights = torch.clamp(ratio, max=cap) * mask
        stats["generation/importance_weight_mean"] = self._global_masked_mean(weights, mask)
        stats["generation/importance_weight_capped_fraction"] = self._global_masked_mean(
            (ratio > cap).float(), mask
        )
        return weights, stats

    # ---------------------------------------------------------------------------------------------- advantage
    def compute_advantages(self, rollout: Rollout) -> dict[str, float]:
        args = self.args
        kl = pm.kl_per_token(rollout.logprobs, rollout.ref_logprobs, args.kl_estimator) * rollout.mask
        rewards, non_score = pm.token_rewards(rollout.scores, kl, self.kl_controller.value, rollout.mask)
        if args.whiten_rewards:
            rewards = pm.masked_whiten(rewards, rollout.mask, shift_mean=False, all_reduce=self._all_reduce)
        advantages, returns = pm.gae(rewards, rollout.values, rollout.mask, args.gamma, args.lam)
        rollout.advantages = pm.masked_whiten(advantages, rollout.mask, all_reduce=self._all_reduce)
        rollout.returns = returns
        sequence_kl = kl.sum(1)
        stats = {
            "objective/kl": self._global_mean(sequence_kl),
            "objective/kl_coef": self.kl_controller.value,
            "objective/non_score_reward": self._global_mean(non_score.sum(1)),
            "objective/rlhf_reward": self._global_mean(rollout.scores + non_score.sum(1)),
            "reward/score": self._global_mean(rollout.scores),
            "value/explained_variance": pm.explained_variance(rollout.values, returns, rollout.mask),
            "response/length": self._global_mean(rollout.mask.sum(1)),
            "response/eos_rate": self._global_mean(rollout.ended.float()),
        }
        if rollout.raw_scores is not None:
            stats["reward/raw"] = self._global_mean(rollout.raw_scores)
        stats.update(rollout.engine_stats)
        return stats

    # ------------------------------------------------------------------------------------------------- update
    def _layout(self, part: MicroBatch, response_mask: torch.Tensor) -> MicroBatch | PackedRows:
        """The micro-batch as the passes run it: packed into one row when `padding_free`, else padded."""
        if not self.padding_free:
            return part
        return pack_rows(
            part.input_ids, part.attention_mask, part.position_ids, part.query_length, response_mask
        )

    def _training_outputs(
        self, part: MicroBatch, mask: torch.Tensor, trunk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MicroBatch | PackedRows]:
        """One micro-batch's forward pass for the losses: the response tokens' log-probs and the critic's values,
        (B, width) with gradients, and the fp32 logits at the sampling temperature that the log-probs came from
        (divided once, kept for the entropy metric): (B, width, V), or (M, V) for the M response tokens of a
        padding-free pass, with the layout whose `scatter` maps them to (B, width)."""
        layout = self._layout(part, mask)
        logits, values, _ = self.model(
            *layout.model_inputs,
            logits_to_keep=layout.keep,
            trunk=layout.gather(trunk) if trunk is not None else None,
            attention_kwargs=layout.attention_kwargs,
        )
        assert logits is not None and values is not None
        logits = layout.response_logits(logits).float() / self.args.temperature
        logprobs = layout.scatter(gather_response_logprobs(logits, layout.response_ids, 1.0))
        return logprobs, layout.scatter(layout.response_values(values).float()), logits, layout

    def update(self, rollout: Rollout, iteration: int) -> dict[str, float]:
        args, plan = self.args, self.plan
        assert rollout.advantages is not None and rollout.returns is not None
        q = rollout.query_length
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for epoch in range(args.ppo_epochs):
            generator = torch.Generator().manual_seed(self._seed(iteration, salt=epoch + 1))
            order = torch.randperm(plan.rollout_batch_size, generator=generator)
            for start in range(0, plan.rollout_batch_size, plan.micro_batch_size):
                index = order[start : start + plan.micro_batch_size].to(rollout.input_ids.device)
                part = micro_batch(rollout.input_ids, rollout.attention_mask, rollout.position_ids, q, index)
                cut = slice(0, part.width)  # response columns past every row's end carry mask 0
                mask = rollout.mask[index][:, cut]
                trunk = None
                if rollout.critic_trunk is not None:
                    lead = q - part.query_length
                    trunk = rollout.critic_trunk[index][:, lead : lead + part.input_ids.shape[1]]
                with self.accelerator.accumulate(self.model):
                    logprobs, values, logits, layout = self._training_outputs(part, mask, trunk)
                    pg = pm.policy_loss(
                        logprobs,
                        rollout.logprobs[index][:, cut],
                        rollout.advantages[index][:, cut],
                        mask,
                        args.cliprange,
                        rollout.token_weights[index][:, cut] if rollout.token_weights is not None else None,
                    )
                    vf_loss, vf_clipfrac = pm.value_loss(
                        values,
                        rollout.values[index][:, cut],
                        rollout.returns[index][:, cut],
                        mask,
                        args.cliprange_value,
                    )
                    loss = pg.loss + args.vf_coef * vf_loss
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and args.max_grad_norm and not self.deepspeed:
                        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if self.accelerator.sync_gradients:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # DeepSpeed steps the optimiser inside backward()
                        self.scheduler.step()
                with torch.no_grad():
                    entropy = pm.masked_mean(layout.scatter(entropy_from_logits(logits)), mask)
                for key, value in (
                    ("loss/policy", pg.loss),
                    ("loss/value", vf_loss),
                    ("loss/total", loss),
                    ("policy/clipfrac", pg.clipfrac),
                    ("policy/approx_kl", pg.approx_kl),
                    ("policy/ratio", pg.ratio),
                    ("policy/entropy", entropy),
                    ("value/clipfrac", vf_clipfrac),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1
        local = torch.tensor([sums[k] / count for k in sorted(sums)], device=rollout.input_ids.device)
        averaged = self._all_reduce(local) / self.accelerator.num_processes
        return dict(zip(sorted(sums), averaged.tolist(), strict=True))

    # ------------------------------------------------------------------------------------------------- train
    def train(self, resume_from_checkpoint: str | None = None) -> Any:
        from tqdm.auto import tqdm
        from transformers.trainer_utils import TrainOutput

        args = self.args
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
            self._sync_engine()  # the engine was built from the initial weights
        start_iteration = self.state.iteration
        progress = tqdm(
            total=self.total_iterations,
            initial=start_iteration,
            desc="ppo",
            disable=not self.accelerator.is_main_process,
            dynamic_ncols=True,
        )
        samples_table: list[dict[str, Any]] = []
        train_started_at = time.time()
        for iteration in range(start_iteration, self.total_iterations):
            started = time.perf_counter()
            rollout = self.rollout(self._prompt_rows(self.state.data_position), iteration)
            stats = self.compute_advantages(rollout)
            train_started = time.perf_counter()
            stats.update(self.update(rollout, iteration))
            sync_started = time.perf_counter()
            if self._sync_engine():
                stats["time/weight_sync_s"] = time.perf_counter() - sync_started
            self.kl_controller.update(stats["objective/kl"], self.plan.global_rollout_batch_size)
            elapsed = time.perf_counter() - started
            counts = torch.stack([rollout.mask.sum(), rollout.attention_mask.sum()]).float()
            tokens, tokens_processed = self._all_reduce(counts).tolist()  # response tokens; query + response
            previous = self.state.log_history[-1].get("num_tokens", 0.0) if self.state.log_history else 0.0
            stats.update(
                {
                    "time/generation_s": rollout.timings["generation"],
                    "time/forward_s": rollout.timings["forward"],
                    "time/scoring_s": rollout.timings["scoring"],
                    "time/training_s": time.perf_counter() - train_started,
                    "time/iteration_s": elapsed,
                    "throughput/samples_per_s": self.plan.global_rollout_batch_size / elapsed,
                    "throughput/response_tokens_per_s": tokens / elapsed,
                    "num_tokens": previous + tokens_processed,  # cumulative, as TRL's trainers log it
                    "lr": self.scheduler.get_last_lr()[0],
                    "loss": stats["loss/total"],
                    **self._numerical_paths(),
                    "step": iteration + 1,
                }
            )
            bad = non_finite(stats, PPO_WATCHED)
            if bad:  # before anything of this iteration is logged as good or saved
                raise NonFiniteError(
                    failure_message(
                        "ppo",
                        iteration + 1,
                        bad,
                        iteration,
                        Path(args.output_dir),
                        self.accelerator.is_main_process,
                    )
                )
            self.state.iteration = iteration + 1
            self.state.data_position = self.state.data_position.after(
                self.plan.global_rollout_batch_size, len(self.prompts)
            )
            self.state.log_history.append(stats)
            if self.accelerator.is_main_process:
                if args.logging_steps and (iteration + 1) % max(1, int(args.logging_steps)) == 0:
                    shown = {k: round(v, 4) for k, v in stats.items() if k in _SHOWN}
                    progress.write(f"[ppo] iteration {iteration + 1}: {json.dumps(shown)}")
                    alignment_progress.emit(
                        iteration + 1,
                        self.total_iterations,
                        time.time() - train_started_at,
                        start_step=start_iteration,
                        loss=stats["loss"],
                        reward=stats["reward/score"],
                        kl=stats["objective/kl"],
                    )
                if self.log_fn is not None:
                    self.log_fn(stats, iteration + 1)
                every = args.sample_table_every
                if self.table_fn is not None and every and ((iteration + 1) % every == 0 or iteration == 0):
                    samples_table.extend(_samples(rollout, iteration + 1, limit=4))
                    self.table_fn(samples_table, iteration + 1)
            progress.update(1)
            if (
                args.save_steps
                and (iteration + 1) % int(args.save_steps) == 0
                and iteration + 1 < self.total_iterations
            ):
                self._save_checkpoint(iteration + 1)
        progress.close()
        losses = [entry["loss"] for entry in self.state.log_history]
        last = self.state.log_history[-1] if self.state.log_history else {}
        metrics = {
            key: last[key]
            for key in (
                "reward/score",
                "objective/kl",
                "objective/kl_coef",
                "response/length",
                "response/eos_rate",
            )
            if key in last
        }
        return TrainOutput(self.state.iteration, sum(losses) / max(1, len(losses)), metrics)

    def _sync_engine(self) -> bool:
        """Copies the policy's weights into an engine that keeps its own (vLLM); False when there is none."""
        if self.engine.backend == "hf":
            return False
        with self._whole_policy() as whole:
            self.engine.sync_weights(whole)
        return True

    def _numerical_paths(self) -> dict[str, float]:
        """Which path this iteration's numbers took, logged with its figures (1 = the fast path): the log-probs kept
        while sampling or a recomputing forward pass (and the check's mean |diff| per token), the critic's kept
        frozen blocks or its whole pass. A run that fell back on one machine only shows it here."""
        paths = {
            "numerics/kept_generation_logprobs": float(self.use_generation_logprobs),
            "numerics/cached_critic_trunk": float(self.unwrapped.trunk_blocks > 0),
        }
        if self.generation_logprob_difference is not None:
            paths["numerics/generation_logprob_mean_diff"] = self.generation_logprob_difference
        return paths

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, iteration: int) -> None:
        """All ranks write their part; the main process writes the state and, after everyone, COMPLETE."""
        from safetensors.torch import save_file

        checkpoint = Path(self.args.output_dir) / f"checkpoint-{iteration}"
        if self.accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        if self.deepspeed:
            self.model.save_checkpoint(str(checkpoint), tag="engine")
        elif self.accelerator.is_main_process:
            trainable = {
                n: p.detach().cpu().contiguous()
                for n, p in self.unwrapped.named_parameters()
                if p.requires_grad
            }
            save_file(trainable, str(checkpoint / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), checkpoint / "optimizer.pt")
        if self.accelerator.is_main_process:
            state = {
                "iteration": iteration,
                "kl_controller": self.kl_controller.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "log_history": self.state.log_history,
                "world_size": self.accelerator.num_processes,
                "data_position": dataclasses.asdict(self.state.data_position),
            }
            artifacts.write_json_atomic(checkpoint / STATE_FILE, state)
        self.accelerator.wait_for_everyone()
        artifacts.fault_point("checkpoint-written", iteration)
        if self.accelerator.is_main_process:
            artifacts.mark_checkpoint_complete(checkpoint)
            self._rotate_checkpoints(checkpoint)
        self.accelerator.wait_for_everyone()
        artifacts.fault_point("checkpoint", iteration)

    def _rotate_checkpoints(self, keep: Path) -> None:
        limit = self.args.save_total_limit or 2
        complete = sorted(
            (p for p in keep.parent.glob("checkpoint-*") if (p / artifacts.CHECKPOINT_MARKER).is_file()),
            key=lambda p: int(p.name.split("-", 1)[1]),
        )
        for old in complete[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((checkpoint / STATE_FILE).read_text())
        written_by, processes = int(state["world_size"]), self.accelerator.num_processes
        if written_by != processes and self.deepspeed:
            raise ValueError(
                f"{checkpoint} holds DeepSpeed ZeRO shards of the optimiser state written by {written_by} processes; "
                f"this run has {processes}, and DeepSpeed reads such shards only on the count that wrote them. "
                f"Resume on {written_by} processes (accelerate launch --num_processes {written_by}), or pass "
                "--restart to train from the start on this count"
            )
        if "data_position" in state:
            position = pm.DataPosition(**state["data_position"])
        else:  # written before the position was recorded: it follows from the iteration and the batch then
            position = pm.DataPosition.at_iteration(
                int(state["iteration"]), written_by * self.plan.rollout_batch_size, len(self.prompts)
            )
        if written_by != processes:
            logger.warning(
                "[ppo] %s was written by %d processes, this run has %d: weights, optimiser, scheduler and KL "
                "controller carry over, the prompts continue at pass %d, prompt %d, and each iteration now takes "
                "%d prompts (%d per process); sampling differs from a run on %d processes from here on",
                checkpoint,
                written_by,
                processes,
                position.data_pass,
                position.offset,
                self.plan.global_rollout_batch_size,
                self.plan.rollout_batch_size,
                written_by,
            )
        if self.deepspeed:
            self.model.load_checkpoint(str(checkpoint), tag="engine", load_lr_scheduler_states=False)
        else:
            tensors = load_file(str(checkpoint / "trainable.safetensors"))
            missing = [
                n for n, p in self.unwrapped.named_parameters() if p.requires_grad and n not in tensors
            ]
            if missing:
                raise ValueError(f"{checkpoint}: checkpoint lacks trainable parameters {missing[:3]}...")
            self.unwrapped.load_state_dict(tensors, strict=False)
            self.optimizer.load_state_dict(
                torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.state.iteration = int(state["iteration"])
        self.state.data_position = position
        self.state.log_history = list(state["log_history"])
        logger.info("[ppo] resumed at iteration %d from %s", self.state.iteration, checkpoint)

    # ---------------------------------------------------------------------------------------------- publishing
    def save_model(self, output_dir: str | Path) -> None:
        """The policy alone, loadable with from_pretrained (full weights or a PEFT adapter), and its tokenizer.
        Every rank must call it: under ZeRO-3 the full weights are gathered from the shards first."""
        state_dict = self.accelerator.get_state_dict(self.model)  # collective under ZeRO-3
        if self.accelerator.is_main_process:
            prefix = "policy."
            policy_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            self.unwrapped.policy.save_pretrained(
                output_dir, state_dict=policy_state, safe_serialization=True
            )
            self.tokenizer.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()


PPO_WATCHED = ("loss/total", "loss/policy", "loss/value", "grad_norm", "objective/kl", "reward/score")
"""Per-iteration values that stop the run when NaN or infinite (alignment.finite)."""

_SHOWN = (
    "reward/score",
    "objective/kl",
    "objective/kl_coef",
    "loss/policy",
    "loss/value",
    "policy/clipfrac",
    "response/length",
    "response/eos_rate",
    "throughput/samples_per_s",
    "time/generation_s",
    "time/forward_s",
    "time/scoring_s",
    "time/training_s",
)


def _samples(rollout: Rollout, iteration: int, limit: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(min(limit, len(rollout.completions))):
        prompt = rollout.prompts[i]
        text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
        rows.append(
            {
                "iteration": iteration,
                "prompt": text,
                "completion": rollout.completions[i],
                "score": float(rollout.scores[i]),
            }
        )
    return rows
