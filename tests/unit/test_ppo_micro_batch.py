"""PPO micro-batches cut to the columns their rows use give the same log-probs and values as full-width passes."""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.rl.ppo_trainer import micro_batch, position_ids_from

PAD = 0


def _rollout() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Three left-padded prompts (query length 5) with right-padded responses of lengths 2, 4 and 1."""
    ids = torch.tensor(
        [
            [PAD, PAD, 11, 12, 13, 21, 22, PAD, PAD],
            [PAD, 14, 15, 16, 17, 23, 24, 25, 26],
            [PAD, PAD, PAD, 18, 19, 27, PAD, PAD, PAD],
        ]
    )
    attention = (ids != PAD).long()
    return ids, attention, 5


def test_micro_batch_drops_only_columns_that_are_padding_in_every_row() -> None:
    ids, attention, q = _rollout()
    positions = position_ids_from(attention)
    part = micro_batch(ids, attention, positions, q, torch.tensor([0, 2]))
    assert part.query_length == 3 and part.width == 2  # two all-pad prompt columns, longest response 2
    assert part.input_ids.tolist() == [[11, 12, 13, 21, 22], [PAD, 18, 19, 27, PAD]]
    assert part.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 2]]  # positions of the full rows
    whole = micro_batch(ids, attention, positions, q, torch.tensor([0, 1, 2]))
    assert whole.input_ids.shape == (3, 8) and whole.width == 4  # row 1 uses every column but the first
    single = micro_batch(ids, attention, positions, q, torch.tensor([2]))
    assert single.input_ids.tolist() == [[18, 19, 27]] and single.query_length == 2 and single.width == 1


def test_cut_passes_equal_full_width_passes(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    ids, attention, q = _rollout()
    positions = position_ids_from(attention)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        index = torch.tensor([2, 0])
        part = micro_batch(ids, attention, positions, q, index)
        cut = model(
            input_ids=part.input_ids,
            attention_mask=part.attention_mask,
            position_ids=part.position_ids,
            logits_to_keep=part.width + 1,
        ).logits
    # logits that predict the kept response tokens: full-width positions q-1 .. q+width-2
    expected = full[index][:, q - 1 : q - 1 + part.width]
    response_mask = attention[index][:, q : q + part.width].bool()
    assert torch.allclose(cut[:, :-1][response_mask], expected[response_mask], atol=1e-5)
