"""The dense LM head gives what TRL's tiled fused head gives (values and log-prob gradients), and is what our SFT
and DPO trainers' models use on a CPU."""

from __future__ import annotations

import pytest
import torch

from alignment.lm_head import DenseLogProbs, use_dense_lm_head

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _both(temperature: float, softcap: float | None, logit_scale: float, bias: bool):
    from trl.kernels import ChunkedLogProbFunction

    torch.manual_seed(0)
    tokens, hidden_size, vocab = 24, 16, 50
    results = []
    for function in (ChunkedLogProbFunction, DenseLogProbs):
        generator = torch.Generator().manual_seed(1)
        hidden = torch.randn(tokens, hidden_size, generator=generator).requires_grad_()
        weight = torch.randn(vocab, hidden_size, generator=generator).requires_grad_()
        bias_vector = torch.randn(vocab, generator=generator) if bias else None
        targets = torch.randint(0, vocab, (tokens,), generator=generator)
        targets[0] = int((hidden[0] @ weight.T).argmax())  # at least one top-1 hit
        values = function.apply(
            hidden, weight, bias_vector, targets, temperature, 16, softcap, logit_scale, OUTPUTS
        )
        values[0].sum().backward()
        results.append((values, hidden.grad, weight.grad))
    return results


@pytest.mark.parametrize(
    "temperature, softcap, logit_scale, bias",
    [(1.0, None, 1.0, False), (0.7, None, 1.0, True), (1.0, 30.0, 0.5, False)],
)
def test_dense_values_and_gradients_equal_trls_tiled_head(
    temperature: float, softcap: float | None, logit_scale: float, bias: bool
) -> None:
    (tiled, tiled_dh, tiled_dw), (dense, dense_dh, dense_dw) = _both(temperature, softcap, logit_scale, bias)
    for name, expected, got in zip(OUTPUTS[:4], tiled[:4], dense[:4], strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-4, msg=name)
    assert torch.equal(dense[4], tiled[4]) and bool(dense[4].any())  # is_top1
    torch.testing.assert_close(dense_dh, tiled_dh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dense_dw, tiled_dw, rtol=1e-4, atol=1e-5)


def test_a_patched_model_computes_the_same_loss_and_keeps_its_plain_forward(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    input_ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    labels = input_ids.clone()
    labels[:, :4] = -100  # a prompt: no loss there
    tiled = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    plain_logits = model(input_ids=input_ids).logits

    assert use_dense_lm_head(model) is True
    assert use_dense_lm_head(model) is True  # a second call does not wrap twice
    dense = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(dense.loss, tiled.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.entropy, tiled.entropy, rtol=1e-4, atol=1e-4)
    assert torch.equal(dense.log_probs[:, :3], torch.zeros(2, 3))  # masked positions stay zero
    torch.testing.assert_close(
        model(input_ids=input_ids).logits, plain_logits
    )  # the unfused forward is untouched

    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer import utils as trl_utils

    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction  # restored after the call


def test_the_dense_head_is_for_cpus_only() -> None:
    from alignment.lm_head import dense_is_faster

    assert dense_is_faster(torch.device("cpu"))
    assert not dense_is_faster(torch.device("meta"))  # any other device keeps TRL's memory-saving head
