"""Padding-free PPO passes: a micro-batch packed into one row gives the log-probs, values and gradients of the
padded pass, with attention per sequence (`sdpa_segments`) or through transformers' block-diagonal mask."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from alignment.rl import ppo_math as pm
from alignment.rl.packing import SEGMENT_ATTENTION, pack_rows, use_segment_attention
from alignment.rl.ppo_trainer import PolicyAndValue, frozen_trunk_blocks, micro_batch
from tests.helpers import rollout_batch, tiny_llama_config

PAD = 0


def _rollout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Three left-padded prompts (query length 5) with right-padded responses of lengths 2, 4 and 1."""
    ids = torch.tensor(
        [
            [PAD, PAD, 11, 12, 13, 21, 22, PAD, PAD],
            [PAD, 14, 15, 16, 17, 23, 24, 25, 26],
            [PAD, PAD, PAD, 18, 19, 27, PAD, PAD, PAD],
        ]
    )
    attention = (ids != PAD).long()
    return ids, attention, pm.position_ids_from(attention), 5


def test_pack_rows_lays_the_real_tokens_end_to_end_and_maps_the_responses_back() -> None:
    ids, attention, positions, q = _rollout()
    packed = pack_rows(ids, attention, positions, q, attention[:, q:])
    assert packed.input_ids.tolist() == [[11, 12, 13, 21, 22, 14, 15, 16, 17, 23, 24, 25, 26, 18, 19, 27]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]]
    assert packed.attention_kwargs["cu_seq_lens_q"].tolist() == [0, 5, 13, 16]
    assert packed.attention_kwargs["max_length_q"] == 8
    assert packed.response_ids.tolist() == [21, 22, 23, 24, 25, 26, 27]
    # each response token is predicted by the packed token just before it
    assert packed.predicting.tolist() == [2, 3, 8, 9, 10, 11, 14]
    assert packed.input_ids[0, packed.predicting + 1].tolist() == packed.response_ids.tolist()
    assert packed.scatter(torch.arange(1.0, 8.0)).tolist() == [
        [1, 2, 0, 0],
        [3, 4, 5, 6],
        [7, 0, 0, 0],
    ]
    grid = ids.unsqueeze(-1).float()
    assert packed.gather(grid)[..., 0].long().tolist() == packed.input_ids.tolist()


def test_pack_rows_refuses_a_response_with_padding_inside() -> None:
    ids, attention, positions, q = _rollout()
    holed = attention.clone()
    holed[1, q + 1] = 0  # a hole between two response tokens
    with pytest.raises(ValueError, match="padding_free: false"):
        pack_rows(ids, holed, positions, q, holed[:, q:])


def _models(attention: str) -> PolicyAndValue:
    """Tiny policy and critic (first block frozen, its trunk kept) with 4 query heads over 2 KV heads."""
    torch.manual_seed(0)
    config = tiny_llama_config(num_hidden_layers=3, attn_implementation=attention)
    critic_config = tiny_llama_config(num_hidden_layers=3, num_labels=1, attn_implementation=attention)
    policy = LlamaForCausalLM(config).eval()
    critic = LlamaForSequenceClassification(critic_config).eval()
    critic.model.embed_tokens.requires_grad_(False)
    critic.model.layers[0].requires_grad_(False)
    return PolicyAndValue(policy, critic, frozen_trunk_blocks(critic))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    return rollout_batch(13, 6, prompt_padding=[3, 1, 0, 0], response_ends=[None, None, 8, 7])


def _padded(model: PolicyAndValue, part: object, response_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    _, _, trunk = model(part.input_ids, part.attention_mask, part.position_ids, keep_trunk=True)
    logits, values, _ = model(
        part.input_ids, part.attention_mask, part.position_ids, logits_to_keep=part.width + 1, trunk=trunk
    )
    logprobs = pm.gather_response_logprobs(logits[:, :-1], part.input_ids[:, part.query_length :], 0.7)
    values = values[:, part.query_length - 1 : -1]
    return logprobs * response_mask, values * response_mask


def _packed(model: PolicyAndValue, part: object, response_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    packed = pack_rows(
        part.input_ids, part.attention_mask, part.position_ids, part.query_length, response_mask
    )
    inputs = (packed.input_ids, None, packed.position_ids)
    extra = {"attention_kwargs": packed.attention_kwargs}
    _, _, trunk = model(*inputs, keep_trunk=True, **extra)
    logits, values, _ = model(*inputs, logits_to_keep=packed.predicting, trunk=trunk, **extra)
    logprobs = pm.gather_response_logprobs(logits[0], packed.response_ids, 0.7)
    return packed.scatter(logprobs), packed.scatter(values[0, packed.predicting])


@pytest.mark.parametrize("attention", ["segments", "sdpa", "eager"])
def test_a_packed_pass_gives_the_padded_pass_log_probs_values_and_gradients(attention: str) -> None:
    """`segments`: sdpa switched to one call per sequence; `sdpa` and `eager`: transformers' block-diagonal mask
    from the packed positions."""
    padded_model = _models("eager" if attention == "eager" else "sdpa")
    packed_model = _models("eager" if attention == "eager" else "sdpa")
    if attention == "segments":
        assert use_segment_attention(packed_model.policy) and use_segment_attention(packed_model.critic)
        assert packed_model.policy.config._attn_implementation == SEGMENT_ATTENTION
    ids, mask, positions, q = _batch()
    part = micro_batch(ids, mask, positions, q, torch.tensor([3, 0, 2, 1]))
    response_mask = part.attention_mask[:, part.query_length :]
    real = response_mask.bool()
    results = []
    for model, run in ((padded_model, _padded), (packed_model, _packed)):
        logprobs, values = run(model, part, response_mask)
        (pm.masked_mean(logprobs, response_mask) + pm.masked_mean(values**2, response_mask)).backward()
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), values.detach(), gradients))
    (lp_padded, v_padded, g_padded), (lp_packed, v_packed, g_packed) = results
    assert real.sum() == 17 and (lp_padded[real] < 0).all()
    assert torch.allclose(lp_packed, lp_padded, atol=1e-5)
    assert torch.allclose(v_packed, v_padded, atol=1e-5)
    assert g_packed.keys() == g_padded.keys() and any("critic.model.layers.2" in name for name in g_packed)
    assert not any("critic.model.layers.0" in name for name in g_packed)  # the frozen trunk gets no gradient
    for name, grad in g_padded.items():
        assert torch.allclose(g_packed[name], grad, atol=1e-5), name


def test_segment_attention_leaves_padded_passes_and_generation_as_sdpa_gives_them() -> None:
    plain, switched = _models("sdpa").policy, _models("sdpa").policy
    assert use_segment_attention(switched)
    ids, mask, positions, q = _batch()
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = switched(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        assert torch.allclose(got, expected, atol=1e-6)
        prompt, prompt_mask = ids[:, :q], mask[:, :q]
        greedy = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": PAD}
        assert torch.equal(
            switched.generate(input_ids=prompt, attention_mask=prompt_mask, **greedy),
            plain.generate(input_ids=prompt, attention_mask=prompt_mask, **greedy),
        )


def test_only_sdpa_models_are_switched() -> None:
    eager = _models("eager").policy
    assert not use_segment_attention(eager)
    assert eager.config._attn_implementation == "eager"
