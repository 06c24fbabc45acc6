"""Model loading and tuning methods on the offline tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignment.config import ConfigError, ModelConfig, TuningConfig
from alignment.models import (
    CHATML_TEMPLATE,
    apply_freeze,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    peft_config_for,
    resolve_model_path,
)


def test_tiny_model_is_prepared_offline_and_loads_through_the_real_path(tiny_model_dir: Path) -> None:
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin")), "weights must be safetensors only"
    assert resolve_model_path("tiny-random-llama") == str(tiny_model_dir)
    cfg = ModelConfig(name_or_path="tiny-random-llama", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer=tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_template_gets_chatml_and_new_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw.chat_template = None
    raw.save_pretrained(tmp_path)
    # Drop the template from the saved files too (transformers may write chat_template.jinja).
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tmp_path)), str(tmp_path))
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id


def test_missing_local_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither config.json nor adapter_config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="unknown embedded model"):
        from alignment.models import prepare_embedded

        prepare_embedded("no-such-model")


def test_freeze_trains_only_last_blocks_and_head(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(
        name_or_path="tiny-random-llama", tuning=TuningConfig(method="freeze", trainable_last_n_blocks=1)
    )
    model = load_causal_lm(cfg)
    apply_freeze(model, cfg.tuning)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(name.startswith("model.layers.1.") for name in trainable)
    assert not any(name.startswith("model.layers.0.") for name in trainable)
    assert "model.norm.weight" in trainable
    with pytest.raises(ConfigError, match="trainable_last_n_blocks=5 but the model has 2 blocks"):
        apply_freeze(model, TuningConfig(method="freeze", trainable_last_n_blocks=5))


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning"])
def test_adapter_methods_train_a_small_fraction(tiny_model_dir: Path, method: str) -> None:
    import peft

    cfg = ModelConfig(name_or_path="tiny-random-llama", tuning=TuningConfig(method=method, lora_r=4))
    model = peft.get_peft_model(load_causal_lm(cfg), peft_config_for(cfg.tuning))
    trainable, total = count_parameters(model)
    assert 0 < trainable < 0.2 * total
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()


def test_full_and_freeze_need_no_peft() -> None:
    assert peft_config_for(TuningConfig(method="full")) is None
    assert peft_config_for(TuningConfig(method="freeze")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA present the CPU error path does not apply")
def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(name_or_path="tiny-random-llama", tuning=TuningConfig(method="qlora"))
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        load_causal_lm(cfg)
