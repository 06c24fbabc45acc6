"""PPO's sampler (`TokenSampler`, `sample_tokens`): draws follow the distribution at the temperature, every
drawn token has a positive probability, and the log-probs kept while sampling equal a full forward pass's."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM

from alignment.generation.hf import SAMPLING_BLOCK, TokenSampler, sample_tokens
from alignment.rl.ppo_math import gather_response_logprobs, position_ids_from, response_mask
from tests.helpers import tiny_llama_config

EOS = 2
VOCAB = 2 * SAMPLING_BLOCK + 88  # three blocks, the last one partial


def test_a_row_with_one_possible_token_draws_it_wherever_it_sits() -> None:
    """Block edges, the first and the last entry of the vocabulary: off-by-ones in the two levels show here."""
    places = [0, SAMPLING_BLOCK - 1, SAMPLING_BLOCK, 2 * SAMPLING_BLOCK + 5, VOCAB - 1]
    logits = torch.full((len(places), VOCAB), float("-inf"))
    logits[torch.arange(len(places)), places] = 0.0
    for seed in range(20):
        drawn = sample_tokens(logits.log_softmax(-1), torch.Generator().manual_seed(seed))
        assert drawn.shape == (len(places), 1)
        assert drawn.squeeze(1).tolist() == places


def test_draws_follow_the_distribution_and_never_take_an_impossible_token() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(VOCAB, generator=generator) * 2.0
    impossible = torch.tensor([0, 7, SAMPLING_BLOCK - 1, SAMPLING_BLOCK, 2 * SAMPLING_BLOCK, VOCAB - 1])
    logits[impossible] = float("-inf")
    logits[[3, SAMPLING_BLOCK + 1, VOCAB - 2]] = torch.tensor([6.0, 5.0, 5.5])  # much mass in every block
    logprobs = logits.log_softmax(-1).expand(4000, VOCAB)
    counts = torch.zeros(VOCAB)
    for _ in range(25):
        drawn = sample_tokens(logprobs, generator).squeeze(1)
        counts += torch.bincount(drawn, minlength=VOCAB).float()
    draws = counts.sum()
    assert counts[impossible].sum() == 0
    expected = logits.softmax(-1)
    # every entry within 5 standard deviations of its expected frequency
    deviation = (counts / draws - expected).abs() / (expected * (1 - expected) / draws).sqrt().clamp_min(
        1e-12
    )
    assert deviation[expected > 0].max() < 5.0
    # and the sampler is not degenerate: the tail (small entries) is drawn too
    tail = expected < 1e-3
    assert counts[tail].sum() > 0.5 * expected[tail].sum() * draws


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked distributions (random weights give near-uniform ones)
    return model


def _left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (4, 7), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    ids[0, :3], attention[0, :3] = 0, 0  # rows of different lengths, padded on the left
    ids[2, :1], attention[2, :1] = 0, 0
    return ids, attention


def _generate(model, ids, attention, sampler, seed=3):
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=EOS)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=attention, generation_config=config, logits_processor=[sampler]
        )


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_kept_log_probs_equal_the_forward_pass_and_keeping_them_changes_no_draw(temperature: float) -> None:
    model = _model()
    ids, attention = _left_padded_prompts()
    sampler = TokenSampler(temperature)
    sequences = _generate(model, ids, attention, sampler)
    assert torch.equal(
        sequences, _generate(model, ids, attention, TokenSampler(temperature, keep_logprobs=False))
    )
    assert not torch.equal(sequences, _generate(model, ids, attention, TokenSampler(temperature), seed=4))
    kept = sampler.finish(sequences, ids.shape[1])
    response = sequences[:, ids.shape[1] :]
    assert kept.shape == response.shape

    mask, _ = response_mask(response, EOS)
    full_attention = torch.cat([attention, mask.long()], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=sequences, attention_mask=full_attention, position_ids=position_ids_from(full_attention)
        ).logits
    recomputed = gather_response_logprobs(logits[:, ids.shape[1] - 1 : -1], response, temperature)
    real = mask.bool()
    torch.testing.assert_close(kept[real], recomputed[real], atol=1e-4, rtol=1e-4)
    # not a tautology: at another temperature the same tokens have other log-probs
    other = gather_response_logprobs(logits[:, ids.shape[1] - 1 : -1], response, 1.0)
    assert (other[real] - kept[real]).abs().mean() > 0.1


def test_the_temperature_shapes_the_draws() -> None:
    """Colder sampling repeats the most likely token more often: the sampler applies the temperature."""
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(2)).expand(2000, VOCAB)
    top = int(logits[0].argmax())
    hits = {}
    for temperature in (0.3, 1.0):
        torch.manual_seed(5)
        scores = TokenSampler(temperature, keep_logprobs=False)(
            torch.zeros(2000, 1, dtype=torch.long), logits
        )
        assert torch.isfinite(scores).sum(dim=1).eq(1).all()  # one finite entry per row: the drawn token
        hits[temperature] = int(scores.argmax(dim=1).eq(top).sum())
    expected = {t: float((logits[0] / t).softmax(-1)[top]) * 2000 for t in hits}
    for temperature, count in hits.items():
        assert abs(count - expected[temperature]) < 5 * expected[temperature] ** 0.5 + 5


def test_the_sampler_refuses_a_sequence_it_did_not_see_generated() -> None:
    model = _model()
    ids, attention = _left_padded_prompts()
    sampler = TokenSampler(0.7)
    sequences = _generate(model, ids, attention, sampler)
    with pytest.raises(RuntimeError, match="logprobs_from_generation: false"):
        sampler.finish(torch.cat([sequences, sequences[:, -1:], sequences[:, -1:]], dim=1), ids.shape[1])


def test_a_decoding_step_undone_by_generate_is_dropped() -> None:
    """Some devices defer generate's stop check by one step and undo the extra token: the sampler then sees one
    call more than there are tokens, and the undone step's draw is dropped."""
    generator = torch.Generator().manual_seed(6)
    steps = [torch.randn(3, VOCAB, generator=generator) * 3 for _ in range(5)]
    sampler = TokenSampler(0.7)
    drawn, expected = [], []
    for scores in steps:  # 4 generated tokens, then the undone step
        token = sampler(torch.zeros(3, 1, dtype=torch.long), scores).argmax(dim=1, keepdim=True)
        drawn.append(token)
        expected.append((scores / 0.7).log_softmax(-1).gather(1, token))
    query = torch.ones(3, 2, dtype=torch.long)
    sequences = torch.cat([query, *drawn[:4]], dim=1)
    torch.testing.assert_close(sampler.finish(sequences, 2), torch.cat(expected[:4], dim=1))
