"""Padding-free passes for PPO: a micro-batch's real tokens in one row, attention kept within each sequence.

A rollout row is a left-padded prompt followed by a right-padded response, so a micro-batch of them carries
padding on both sides (on SmolLM2 with the quickstart's prompts, 145 of a micro-batch's 656 columns x rows). Every
matmul pays for it. `pack_rows` lays the real tokens of every row end to end in a single row with positions that
restart at 0 for each sequence, and keeps what maps the outputs back: the packed positions whose logits and values
belong to each response token, and where each response token sits in the (rows, response columns) grid that the
PPO losses use.

transformers keeps packed sequences apart by their positions (its masks for `sdpa` and `eager` become block-diagonal
when `attention_mask` is None), and its flash-attention kernels take the sequence bounds (`cu_seq_lens_q/k`), which
`PackedRows.attention_kwargs` carries. A dense block-diagonal mask still computes attention over the whole packed
row, quadratic in the number of tokens of all rows together, so `use_segment_attention` gives a model whose
attention is `sdpa` an attention function that runs `scaled_dot_product_attention` once per sequence (causal) when
the bounds are given, and is plain `sdpa` otherwise (generation, padded batches).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("alignment.ppo")

SEGMENT_ATTENTION = "sdpa_segments"
"""The attention implementation `use_segment_attention` registers: `sdpa`, once per packed sequence."""


@dataclass
class PackedRows:
    """A micro-batch of B rows x T columns (prompt columns, then `width` response columns) as one row of its N real
    tokens."""

    input_ids: torch.Tensor
    """(1, N)"""
    position_ids: torch.Tensor
    """(1, N): each sequence's own positions, restarting at 0."""
    attention_kwargs: dict[str, Any]
    """The sequence bounds, as transformers' flash-attention path and `segment_attention` take them."""
    tokens: torch.Tensor
    """(N,): where each packed token came from, as an index into the micro-batch's B x T grid, row-major."""
    predicting: torch.Tensor
    """(M,): the packed position before each of the M response tokens, whose logits predict it and whose value is
    the critic's estimate at that step."""
    response: torch.Tensor
    """(M,): where each response token sits in the B x width grid of the losses, row-major."""
    response_ids: torch.Tensor
    """(M,): the response tokens."""
    shape: tuple[int, int]
    """(B, width)"""
    grid: tuple[int, int]
    """(B, T): the micro-batch's rows and columns."""

    # The same interface as `ppo_trainer.MicroBatch`, the padded layout: the passes take either.
    @property
    def model_inputs(self) -> tuple[torch.Tensor, None, torch.Tensor]:
        """input_ids, attention_mask (None: the bounds are in `attention_kwargs`), position_ids."""
        return self.input_ids, None, self.position_ids

    @property
    def keep(self) -> torch.Tensor:
        """`logits_to_keep`: the positions whose logits predict the response tokens."""
        return self.predicting

    @property
    def real(self) -> torch.Tensor:
        """(1, N): every packed position is a real token."""
        return torch.ones_like(self.input_ids, dtype=torch.bool)

    def response_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The kept logits (1, M, V) -> (M, V), one row per response token."""
        return logits[0]

    def response_values(self, values: torch.Tensor) -> torch.Tensor:
        """Values at every packed position (1, N) -> (M,), the critic's estimate before each response token."""
        return values[0, self.predicting]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(M,) per response token -> (B, width), zeros where a row has no response token."""
        rows, width = self.shape
        out = values.new_zeros(rows * width)
        return out.index_put((self.response,), values).view(rows, width)

    def gather(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) aligned with the micro-batch -> (1, N, ...) aligned with the packed row."""
        return grid.reshape(-1, *grid.shape[2:])[self.tokens].unsqueeze(0)

    def ungather(self, packed: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) aligned with the packed row -> (B, T, ...), zeros at padding: the inverse of `gather`."""
        out = packed.new_zeros(self.grid[0] * self.grid[1], *packed.shape[2:])
        return out.index_copy(0, self.tokens, packed[0]).view(*self.grid, *packed.shape[2:])


def pack_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    query_length: int,
    response_mask: torch.Tensor,
) -> PackedRows:
    """Pack B rows of `query_length` prompt columns then response columns; `response_mask` (B, width) marks the
    response tokens the losses use (each must be a real token whose previous column is real too, which holds for
    left-padded prompts and right-padded responses)."""
    real = attention_mask.bool()
    rows, columns = real.shape
    width = response_mask.shape[1]
    if query_length + width > columns:
        raise ValueError(f"pack_rows: {width} response columns do not fit after {query_length} of {columns}")
    flat_real = real.flatten()
    tokens = flat_real.nonzero().squeeze(1)
    packed_index = flat_real.long().cumsum(0) - 1  # grid index -> packed index (valid where real)
    lengths = real.sum(dim=1)
    bounds = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max()) if rows else 0

    row, column = response_mask.bool().nonzero(as_tuple=True)
    at = row * columns + query_length + column
    if not (flat_real[at].all() and flat_real[at - 1].all()):
        raise ValueError(
            "pack_rows: a response token or the token before it is padding; padding-free passes need left-padded "
            "prompts and right-padded responses (set padding_free: false)"
        )
    return PackedRows(
        input_ids=input_ids.flatten()[tokens].unsqueeze(0),
        position_ids=position_ids.flatten()[tokens].unsqueeze(0),
        attention_kwargs={
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": longest,
            "max_length_k": longest,
        },
        tokens=tokens,
        predicting=packed_index[at - 1],
        response=row * width + column,
        response_ids=input_ids.flatten()[at],
        shape=(rows, width),
        grid=(rows, columns),
    )


def segment_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa` attention, except over a packed row (`cu_seq_lens_q` given, one row, no cache):
    causal attention within each sequence, one `scaled_dot_product_attention` call per sequence, so the cost is
    that of the sequences apart, not of the whole row. A sliding window shorter than a sequence falls back to
    `sdpa` with transformers' block-diagonal mask (correct, dense)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    window = getattr(module, "sliding_window", None)
    segments = (
        cu_seq_lens_q is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] == int(cu_seq_lens_q[-1])
        and getattr(module, "is_causal", True)
        and not (window and kwargs.get("max_length_q", 0) > window)
    )
    if not segments:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert cu_seq_lens_q is not None
    bounds = cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        if end > start
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def use_segment_attention(model: nn.Module) -> bool:
    """Switch a model whose attention is transformers' `sdpa` to `segment_attention` (registered once; not saved
    with the model, whose config keeps no attention implementation). Other implementations are left alone: flash
    attention takes the packed bounds itself, and `eager` / `flex_attention` use the block-diagonal mask. Returns
    whether the model was switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(
        model, "set_attn_implementation"
    ):
        return False
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
    model.set_attn_implementation(SEGMENT_ATTENTION)
    return True
