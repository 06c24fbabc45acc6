"""PPO arithmetic against hand-computed values (alignment.rl.ppo_math)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from alignment.rl import ppo_math as pm


def test_gae_matches_hand_computation() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    advantages, returns = pm.gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    # t=2: 2 - 0.1 = 1.9; t=1: 0 + 0.9*0.1 - 0.2 + 0.72*1.9 = 1.258; t=0: 1 + 0.9*0.2 - 0.5 + 0.72*1.258
    assert advantages.flatten().tolist() == pytest.approx([1.58576, 1.258, 1.9], abs=1e-5)
    assert returns.flatten().tolist() == pytest.approx([2.08576, 1.458, 2.0], abs=1e-5)


def test_gae_stops_at_the_end_of_the_response() -> None:
    rewards = torch.tensor([[1.0, 0.0, 5.0]])  # the 5 is past the end: ignored
    values = torch.tensor([[0.5, 0.2, 9.0]])
    advantages, returns = pm.gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.8)
    # t=1: 0 + 0 - 0.2 = -0.2; t=0: 1 + 0.9*0.2 - 0.5 + 0.72*(-0.2) = 0.536
    assert advantages.flatten().tolist() == pytest.approx([0.536, -0.2, 0.0], abs=1e-6)
    assert returns[0, 2] == 0.0


def test_whitening_uses_only_masked_positions() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert pm.masked_whiten(values, mask).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    unshifted = pm.masked_whiten(values, mask, shift_mean=False)
    assert unshifted.flatten().tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)


def test_whitening_across_processes_equals_whitening_the_global_batch() -> None:
    """Two 'processes' (threads) whiten their halves with an all-reduce; the result is the global whitening."""
    halves = [torch.tensor([[1.0, 4.0, 0.0]]), torch.tensor([[7.0, 2.0, 9.0]])]
    masks = [torch.tensor([[1.0, 1.0, 0.0]]), torch.ones(1, 3)]
    barrier = threading.Barrier(2)
    slots: list[torch.Tensor | None] = [None, None]
    results: list[torch.Tensor | None] = [None, None]

    def all_reduce_for(rank: int):
        def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
            slots[rank] = tensor.clone()
            barrier.wait()
            total = slots[0] + slots[1]  # type: ignore[operator]
            barrier.wait()
            return total

        return all_reduce

    def worker(rank: int) -> None:
        results[rank] = pm.masked_whiten(halves[rank], masks[rank], all_reduce=all_reduce_for(rank))

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    together = pm.masked_whiten(torch.cat(halves, dim=1), torch.cat(masks, dim=1))
    assert torch.cat(results, dim=1).flatten().tolist() == pytest.approx(
        together.flatten().tolist(), abs=1e-5
    )  # type: ignore[arg-type]
    assert results[0][0, 2] == 0.0  # type: ignore[index]


def test_clipped_policy_loss() -> None:
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(1.5))  # ratio 1.5 on both tokens
    advantages = torch.tensor([[1.0, -1.0]])
    result = pm.policy_loss(new, old, advantages, torch.ones(1, 2), cliprange=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (unclipped)
    assert result.loss.item() == pytest.approx(0.15, abs=1e-6)
    assert result.clipfrac.item() == pytest.approx(0.5)
    assert result.approx_kl.item() == pytest.approx(0.5 * math.log(1.5) ** 2, abs=1e-6)


def test_policy_loss_gradient_is_zero_where_clipped() -> None:
    new = torch.full((1, 1), math.log(1.5), requires_grad=True)
    pm.policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2).loss.backward()
    assert new.grad is not None and new.grad.item() == 0.0


def test_policy_loss_weighs_each_token_by_its_importance_weight() -> None:
    # Ratios 1 (unclipped), advantages 1 and -2: per-token terms -1 and 2; weights 0.5 and 2 -> (-0.5 + 4) / 2.
    logprobs = torch.zeros(1, 2, requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0]])
    weights = torch.tensor([[0.5, 2.0]])
    result = pm.policy_loss(logprobs, torch.zeros(1, 2), advantages, torch.ones(1, 2), 0.2, weights)
    assert result.loss.item() == pytest.approx(1.75)
    result.loss.backward()  # d/dlogprob of -A * w * ratio at ratio 1, over 2 tokens: -A * w / 2
    assert logprobs.grad.flatten().tolist() == pytest.approx([-0.25, 2.0])
    unweighted = pm.policy_loss(logprobs, torch.zeros(1, 2), advantages, torch.ones(1, 2), 0.2)
    assert unweighted.loss.item() == pytest.approx(0.5)


def test_clipped_value_loss() -> None:
    loss, clipfrac = pm.value_loss(
        torch.ones(1, 1), torch.zeros(1, 1), torch.full((1, 1), 2.0), torch.ones(1, 1), cliprange_value=0.2
    )
    # unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24
    assert loss.item() == pytest.approx(1.62)
    assert clipfrac.item() == 1.0
    unclipped, _ = pm.value_loss(
        torch.ones(1, 1), torch.zeros(1, 1), torch.full((1, 1), 2.0), torch.ones(1, 1), cliprange_value=None
    )
    assert unclipped.item() == pytest.approx(0.5)


def test_kl_estimators() -> None:
    logprobs = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert pm.kl_per_token(logprobs, ref, "k1").item() == pytest.approx(math.log(2))
    assert pm.kl_per_token(logprobs, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert pm.kl_per_token(logprobs, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        pm.kl_per_token(logprobs, ref, "k4")


def test_response_mask_eos_and_missing_eos_penalty() -> None:
    response = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]])
    mask, ended = pm.response_mask(response, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert ended.tolist() == [True, False]
    scores = torch.tensor([1.0, -1.0])
    assert pm.apply_missing_eos_penalty(scores, ended, 1.0).tolist() == [1.0, -2.0]
    assert pm.apply_missing_eos_penalty(scores, ended, None).tolist() == [1.0, -1.0]


def test_score_lands_on_the_last_response_token_with_the_kl_penalty() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards, non_score = pm.token_rewards(torch.tensor([1.0, -1.0]), torch.ones(2, 4), 0.1, mask)
    assert rewards.flatten().tolist() == pytest.approx([-0.1, 0.9, 0.0, 0.0, -0.1, -0.1, -0.1, -1.1])
    assert non_score.sum().item() == pytest.approx(-0.6)


def test_adaptive_kl_controller_and_its_state() -> None:
    controller = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_samples=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    controller.update(current_kl=5.4, n_samples=256)  # error -0.1
    expected = 0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 256 / 10000)
    assert controller.value == pytest.approx(expected)
    restored = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    fixed = pm.FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05


def test_batch_arithmetic() -> None:
    plan = pm.plan_batches(
        rollout_batch_size=16, micro_batch_size=4, gradient_accumulation_steps=2, num_processes=2
    )
    assert (plan.mini_batch_size, plan.mini_batches_per_epoch, plan.global_rollout_batch_size) == (8, 2, 32)
    with pytest.raises(
        ValueError, match=r"ppo.rollout_batch_size=10 .* multiple of the mini-batch .* 4 x 1 = 4"
    ):
        pm.plan_batches(
            rollout_batch_size=10, micro_batch_size=4, gradient_accumulation_steps=1, num_processes=1
        )
    with pytest.raises(ValueError, match="per_device_train_batch_size must be at least 1"):
        pm.plan_batches(
            rollout_batch_size=8, micro_batch_size=0, gradient_accumulation_steps=1, num_processes=1
        )


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert pm.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert pm.explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)


def test_last_positions_index_the_tail_and_give_the_lm_head_a_contiguous_input(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    assert pm.last_positions(10, 3).tolist() == [7, 8, 9]
    assert pm.last_positions(2, 5).tolist() == [0, 1]  # never before the first position
    assert pm.last_positions(10, 0) == 0  # every position, as transformers reads 0

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).requires_grad_(False)
    inputs: list[torch.Tensor] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    input_ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    by_slice = model(input_ids=input_ids, logits_to_keep=4).logits
    by_index = model(input_ids=input_ids, logits_to_keep=pm.last_positions(9, 4)).logits
    torch.testing.assert_close(by_index, by_slice)
    assert by_index.shape == (3, 4, model.config.vocab_size)
    assert not inputs[0].is_contiguous() and inputs[1].is_contiguous()


def test_data_position_matches_the_constant_batch_layout_and_never_spans_passes() -> None:
    """With one batch size the position after i batches is (pass i // per_pass, offset (i % per_pass) x batch): a
    pass's last N mod batch prompts are dropped. A resume with another batch size continues inside the pass."""
    position = pm.DataPosition()
    starts = []
    for _ in range(7):
        start = position.next_batch(16, 40)
        starts.append((start.data_pass, start.offset))
        position = position.after(16, 40)
    assert starts == [(0, 0), (0, 16), (1, 0), (1, 16), (2, 0), (2, 16), (3, 0)]
    for iteration in range(7):
        expected = pm.DataPosition()
        for _ in range(iteration):
            expected = expected.after(16, 40)
        at = pm.DataPosition.at_iteration(iteration, 16, 40)
        assert at.next_batch(16, 40) == expected.next_batch(16, 40)
    resumed = pm.DataPosition(1, 16)  # 2 processes x 8 stopped here; 1 process x 8 goes on
    assert resumed.next_batch(8, 40) == pm.DataPosition(1, 16)
    assert resumed.after(8, 40).after(8, 40).after(8, 40) == pm.DataPosition(1, 40)
    assert resumed.after(8, 40).after(8, 40).after(8, 40).next_batch(8, 40) == pm.DataPosition(2, 0)
    with pytest.raises(ValueError):
        pm.DataPosition().next_batch(41, 40)
