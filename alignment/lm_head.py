"""The LM head's per-token log-probs on CPU: dense logits instead of TRL's tiled torch fallback.

TRL 1.16's SFTTrainer and DPOTrainer patch the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`):
per-token log-probs, entropy and top-1 flags computed tile by tile, never materialising the (tokens, vocab) logits.
On CUDA a Triton kernel folds each tile in one pass. Elsewhere (CPU) TRL folds each tile with a dozen torch
elementwise passes over it and recomputes every tile in the backward pass: one extra LM-head matmul and about twice
the time of the plain path. Measured on SmolLM2-135M (4,096 tokens, vocabulary 49,152, fp32, 2 CPU threads): forward
and backward 9.7 s through TRL's fallback against 4.6 s for dense logits and `cross_entropy`, and `bench profile`
put the fallback's elementwise work at a quarter of an SFT step at 512 tokens (docs/BENCHMARKS.md).

`use_dense_lm_head(model)` keeps TRL's patched forward (its handling of logit scales, soft-capping, temperature,
PEFT and ZeRO-3 gathering stays TRL's) and swaps only the per-tile function for `DenseLogProbs` during the model's
fused calls. The price is memory: the logits and their log-softmax, 2 x tokens x vocab floats per micro-batch.
Entropy, `log_sum_sq_probs`, `mean_logits` and `is_top1` carry no gradient here: the SFT and DPO losses of TRL 1.16
use them for metrics (and WPO weights) only, while TRL's kernel also differentiates the entropy.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger("alignment.lm_head")


class DenseLogProbs:
    """Same call and outputs as TRL's `ChunkedLogProbFunction.apply`, from the materialised logits."""

    @staticmethod
    def apply(
        hidden: torch.Tensor,  # (N, H)
        weight: torch.Tensor,  # (V, H)
        bias: torch.Tensor | None,  # (V,)
        targets: torch.Tensor,  # (N,)
        temperature: float,
        chunk_size: int,  # TRL's tile width; unused: there are no tiles
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = ("log_probs",),
    ) -> tuple[
        torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None
    ]:
        logits = F.linear(hidden, weight, bias).float()  # (N, V), the fold runs in fp32 as TRL's does
        if logit_scale != 1.0:
            logits = logits * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        if temperature != 1.0:
            logits = logits / temperature
        # One log-softmax serves the log-probs (its fused backward) and the metrics; (N, V)
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
        entropy = log_sum_sq_probs = mean_logits = is_top1 = None
        with torch.no_grad():
            if "entropy" in outputs:
                probs = log_softmax.exp()
                entropy = -probs.mul_(log_softmax).sum(-1)  # in place: one (N, V) buffer, not two
            if "log_sum_sq_probs" in outputs:
                log_sum_sq_probs = torch.logsumexp(2 * log_softmax, dim=-1)
            if "mean_logits" in outputs:
                mean_logits = logits.mean(-1)
            if "is_top1" in outputs:
                is_top1 = logits.argmax(-1) == targets  # argmax is the first maximum, as TRL counts ties
        return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


def dense_is_faster(device: torch.device) -> bool:
    """True on a CPU, where TRL's fused head has no Triton kernel and the dense path was measured faster. Elsewhere
    TRL's head is kept: its Triton kernel on CUDA, and its memory-saving fallback on accelerators this project has
    not measured (the dense logits of a GPU-sized batch and vocabulary take gigabytes)."""
    from trl.kernels.chunked_logprob import _use_triton

    return device.type == "cpu" and not _use_triton(device)


def use_dense_lm_head(model: Any) -> bool:
    """Serve the fused-head calls of a model TRL patched (`add_fused_lm_head`) with `DenseLogProbs` when its LM head
    sits on a CPU (`dense_is_faster`). Returns whether it did."""
    from trl.trainer import utils as trl_utils

    head = model.get_output_embeddings()
    if head is None or not dense_is_faster(head.weight.device):
        return False
    fused_forward = model.forward
    if getattr(fused_forward, "dense_lm_head", False):
        return True

    @functools.wraps(fused_forward)
    def forward(*args: Any, fused_lm_head: bool = False, **kwargs: Any) -> Any:
        if not fused_lm_head:
            return fused_forward(*args, **kwargs)
        # TRL's forward looks the tile function up in its module at call time; the autograd graph built during the
        # call does not look it up again, so restoring it afterwards is safe for the backward pass.
        tiled = trl_utils._ChunkedLogProbFunction
        trl_utils._ChunkedLogProbFunction = DenseLogProbs
        try:
            return fused_forward(*args, fused_lm_head=True, **kwargs)
        finally:
            trl_utils._ChunkedLogProbFunction = tiled

    forward.dense_lm_head = True  # type: ignore[attr-defined]
    model.forward = forward
    return True


def use_dense_lm_heads(trainer: Any, stage: str) -> list[str]:
    """`use_dense_lm_head` on the models a TRL trainer patched: its policy (under PEFT, the base model TRL patched)
    and its reference model, when it has one. Logs and returns which were switched."""
    from peft import PeftModel

    policy = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    switched = ["policy"] if use_dense_lm_head(policy) else []
    reference = getattr(trainer, "ref_model", None)
    if reference is not None and use_dense_lm_head(reference):
        switched.append("reference")
    if switched:
        logger.info(
            "[%s] LM head: dense logits for the %s (CPU; TRL's tiled head is for Triton devices)",
            stage,
            " and ".join(switched),
        )
    return switched
