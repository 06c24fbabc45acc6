"""The critic's kept trunk: values from the frozen blocks' kept output equal the full pass's, on micro-batches
cut as the PPO update cuts them, and gradients reach only the trained blocks."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from alignment.rl.ppo_trainer import PolicyAndValue, frozen_trunk_blocks, micro_batch
from tests.helpers import rollout_batch, tiny_llama_config


def _models(frozen: int) -> PolicyAndValue:
    torch.manual_seed(0)
    config = tiny_llama_config(num_hidden_layers=4)
    critic = LlamaForSequenceClassification(tiny_llama_config(num_hidden_layers=4, num_labels=1))
    critic.model.embed_tokens.requires_grad_(False)
    for layer in critic.model.layers[:frozen]:
        layer.requires_grad_(False)
    return PolicyAndValue(LlamaForCausalLM(config).eval(), critic.eval(), frozen_trunk_blocks(critic))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts (query length 5) + right-padded responses, as a rollout holds them."""
    return rollout_batch(11, 5, prompt_padding=[2, 1, 0, 0], response_ends=[None, None, 8, 6])


def test_frozen_trunk_blocks_counts_the_leading_frozen_blocks() -> None:
    assert _models(frozen=3).trunk_blocks == 3
    assert _models(frozen=0).trunk_blocks == 0
    model = _models(frozen=3)
    model.critic.model.layers[1].requires_grad_(True)  # a trained block in the middle ends the trunk
    assert frozen_trunk_blocks(model.critic) == 1
    model.critic.model.embed_tokens.requires_grad_(True)  # trained embeddings: nothing to keep
    assert frozen_trunk_blocks(model.critic) == 0


@pytest.mark.parametrize("frozen", [1, 3, 4])
def test_values_from_the_kept_trunk_equal_the_full_pass_on_cut_micro_batches(frozen: int) -> None:
    model = _models(frozen)
    ids, mask, positions, query_length = _batch()
    with torch.no_grad():
        logits, values, trunk = model(ids, mask, positions, keep_trunk=True)
    assert trunk is not None and trunk.shape == (4, 11, 32)
    for rows in ([0, 2], [1, 3], [3]):  # the update's micro-batches keep only the columns their rows use
        index = torch.tensor(rows)
        part = micro_batch(ids, mask, positions, query_length, index)
        lead = query_length - part.query_length
        cut = trunk[index][:, lead : lead + part.input_ids.shape[1]]
        _, cached, _ = model(
            part.input_ids, part.attention_mask, part.position_ids, trunk=cut, with_logits=False
        )
        _, full, _ = model(part.input_ids, part.attention_mask, part.position_ids, with_logits=False)
        real = part.attention_mask.bool()
        torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            full[real], values[index][:, lead : lead + real.shape[1]][real], atol=1e-5, rtol=1e-5
        )
    assert len(model.critic.model.layers) == 4  # the blocks were put back


def test_gradients_through_the_kept_trunk_equal_the_full_pass() -> None:
    model = _models(frozen=2)
    ids, mask, positions, _ = _batch()
    with torch.no_grad():
        _, _, trunk = model(ids, mask, positions, keep_trunk=True)
    grads = []
    for kwargs in ({"trunk": trunk}, {}):
        model.zero_grad()
        _, values, _ = model(ids, mask, positions, with_logits=False, **kwargs)
        (values * mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.critic.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1])
    assert not any("layers.0." in n or "layers.1." in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)
