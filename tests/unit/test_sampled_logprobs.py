"""Log-probs kept while sampling (`SampledLogprobs`): the same tokens as sampling at the temperature, and the same
log-probs as a full forward pass over the finished sequences."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM

from alignment.rl.ppo_math import gather_response_logprobs, position_ids_from, response_mask
from alignment.rl.ppo_trainer import SampledLogprobs
from tests.helpers import tiny_llama_config

EOS = 2


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


def _generate(model, ids, attention, temperature, recorder=None, seed=3):
    config = GenerationConfig(
        max_new_tokens=12,
        do_sample=True,
        temperature=1.0 if recorder is not None else temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=[recorder] if recorder is not None else None,
        )


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_log_probs_equal_the_forward_pass_and_sampling_is_unchanged(temperature: float) -> None:
    model = _model()
    ids, attention = _left_padded_prompts()
    recorder = SampledLogprobs(temperature)
    sequences = _generate(model, ids, attention, temperature, recorder)
    # the processor applies the temperature itself: the same tokens as generate at that temperature
    assert torch.equal(sequences, _generate(model, ids, attention, temperature))
    kept = recorder.finish(sequences, ids.shape[1])
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


def test_the_recorder_refuses_a_sequence_it_did_not_see_generated() -> None:
    model = _model()
    ids, attention = _left_padded_prompts()
    recorder = SampledLogprobs(0.7)
    sequences = _generate(model, ids, attention, 0.7, recorder)
    with pytest.raises(RuntimeError, match="logprobs_from_generation: false"):
        recorder.finish(torch.cat([sequences, sequences[:, -1:]], dim=1), ids.shape[1])


def test_a_decoding_step_undone_by_generate_is_dropped() -> None:
    """Some devices defer generate's stop check by one step and undo the extra token: the processor then sees one
    call more than there are tokens, and the undone step's distribution is dropped."""
    model = _model()
    ids, attention = _left_padded_prompts()
    recorder = SampledLogprobs(0.7)
    sequences = _generate(model, ids, attention, 0.7, recorder)
    expected = recorder.finish(sequences, ids.shape[1])
    replay = SampledLogprobs(0.7)
    generated = sequences.shape[1] - ids.shape[1]
    full_attention = torch.cat([attention, torch.ones_like(sequences[:, ids.shape[1] :])], dim=1)
    with torch.no_grad():
        for t in range(generated + 1):  # calls for every token, plus the undone one
            prefix, mask = sequences[:, : ids.shape[1] + t], full_attention[:, : ids.shape[1] + t]
            logits = model(input_ids=prefix, attention_mask=mask, position_ids=position_ids_from(mask)).logits
            replay(prefix, logits[:, -1])
    torch.testing.assert_close(replay.finish(sequences, ids.shape[1]), expected, atol=1e-4, rtol=1e-4)
