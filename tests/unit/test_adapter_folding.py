"""Generation with the LoRA adapter folded into temporary weights: the same outputs as the adapter layers, and the
base weights (the frozen reference) come back untouched."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from alignment.generation.hf import adapter_folded
from tests.helpers import tiny_llama_config


def _lora_model(**lora: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_llama_config()
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # a trained adapter (B starts at zero)
    return model.eval()


def test_folded_adapter_gives_the_adapter_outputs_and_restores_the_base_weights() -> None:
    model = _lora_model()
    ids = torch.randint(1, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    with torch.no_grad():
        with model.disable_adapter():
            without = model(input_ids=ids).logits
        expected = model(input_ids=ids).logits
        assert not torch.allclose(without, expected, atol=1e-3)  # the adapter matters
        with adapter_folded(model) as folded:
            assert folded
            got = model(input_ids=ids).logits
            greedy = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(
            greedy, model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        )
        for name, parameter in model.named_parameters():
            if "lora_" not in name:
                assert torch.equal(parameter, base[name]), name  # bit for bit: nothing drifts
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=0, rtol=0)


def test_adapters_it_cannot_fold_are_left_alone() -> None:
    dora = _lora_model(use_dora=True)
    with adapter_folded(dora) as folded:
        assert not folded
    plain = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=1))
    with adapter_folded(plain) as folded:
        assert not folded
