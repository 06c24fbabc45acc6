"""The peer side of `python -m bench ppo`: TRL 1.12.0's PPOTrainer (`trl.experimental.ppo`, the last TRL
release with PPO) on the same SFT policy, reward model, prompts and settings as ours.

Runs in its own virtual environment (TRL 1.12.0 beside the same torch / transformers / peft versions as the
project; `make bench-peer-venv` builds it) and imports nothing from `alignment`. The orchestrator
(bench/ppo.py) writes the prompts and the settings as JSON, runs this script, and evaluates the saved
policy with the same code as ours.

What it adapts, and why (each only so that the two trainers optimise the same reward):
- The reward model's normalisation (`normalization.json`: mean, std) is folded into its score head
  (`(w.h - mean) / std` as a linear layer with a bias), since TRL's reward is the raw score-head output.
- TRL scores the token ids it generated, ending at the EOS token; our RM was trained on chat-template text, which
  ends `<|im_end|>\\n`. For reward-model calls only, the newline token is appended after each EOS so the RM reads
  a response as it was trained to. Value-model calls are untouched.
- Wall-clock timers wrap TRL's module-level `batch_generation`, `get_reward` and `forward` functions to split
  time into generation, value / reward scoring, reference forward and the rest (the PPO update).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch


def _load_sft_policy(sft_dir: Path) -> torch.nn.Module:
    """The SFT policy as a plain model with its LoRA adapter (if any) merged, as ours starts from it.

    A LoRA SFT artifact holds its adapter only. Loading that directory with AutoModelForCausalLM attaches the
    adapter through transformers' PEFT integration; PPOTrainer's own LoRA then stacks beside it. TRL trains and
    logs correctly that way, but `merge_and_unload()` at the end merges TRL's adapter only: the saved policy was
    the base model plus TRL's update, without the SFT adapter (docs/BENCHMARKS.md).
    """
    import peft
    from transformers import AutoModelForCausalLM

    adapter_config = sft_dir / "adapter_config.json"
    if not adapter_config.exists():
        return AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32, use_safetensors=True)
    base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True)
    merged = peft.PeftModel.from_pretrained(base, sft_dir).merge_and_unload()
    if getattr(merged, "_hf_peft_config_loaded", False) or hasattr(merged, "peft_config"):
        raise SystemExit(f"{sft_dir}: the SFT adapter is still attached after merging")
    return merged


def _freeze_all_but_last_blocks(model: torch.nn.Module, n: int) -> None:
    """The same freezing as the project's `critic_trainable_last_n_blocks`: last n blocks, final norm, head."""
    for parameter in model.parameters():
        parameter.requires_grad = False
    for block in list(model.model.layers)[len(model.model.layers) - n :]:
        for parameter in block.parameters():
            parameter.requires_grad = True
    for module in (model.model.norm, model.score):
        for parameter in module.parameters():
            parameter.requires_grad = True


def _fold_normalization(reward_model: torch.nn.Module, rm_dir: Path) -> dict | None:
    stats_path = rm_dir / "normalization.json"
    if not stats_path.is_file():
        return None
    stats = json.loads(stats_path.read_text())
    old = reward_model.score
    new = torch.nn.Linear(old.in_features, 1, bias=True, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight / stats["std"])
        base = old.bias if old.bias is not None else torch.zeros(1)
        new.bias.copy_((base - stats["mean"]) / stats["std"])
    reward_model.score = new
    return {"mean": stats["mean"], "std": stats["std"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="JSON file written by bench/ppo_vs_trl.py")
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    settings = json.loads(Path(cli.settings).read_text())
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)

    import peft
    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(settings.get("threads") or torch.get_num_threads())
    sft_dir, rm_dir = Path(settings["sft"]), Path(settings["reward_model"])
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("TRL's PPOTrainer masks pad tokens; the tokenizer's pad token must differ from EOS")
    newline_id = tokenizer.encode("\n", add_special_tokens=False)
    if len(newline_id) != 1:
        raise SystemExit(f"expected a single newline token, got {newline_id}")

    prompts = [json.loads(line) for line in Path(settings["prompts"]).read_text().splitlines() if line]
    encoded = [
        tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for row in prompts
    ]
    dataset = Dataset.from_dict({"input_ids": encoded})

    transformers.set_seed(settings["seed"])
    policy = _load_sft_policy(sft_dir)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        rm_dir, num_labels=1, dtype=torch.float32, use_safetensors=True
    )
    _freeze_all_but_last_blocks(value_model, settings["critic_trainable_last_n_blocks"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        rm_dir, num_labels=1, dtype=torch.float32, use_safetensors=True
    )
    folded = _fold_normalization(reward_model, rm_dir)
    for model in (value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    lora = settings["lora"]
    peft_config = peft.LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    rollout = settings["rollout_batch_size"]
    config = PPOConfig(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=rollout,  # TRL's rollout batch per rank is this x gradient_accumulation_steps
        gradient_accumulation_steps=1,
        num_mini_batches=rollout // settings["mini_batch_size"],
        local_rollout_forward_batch_size=rollout,
        total_episodes=rollout * settings["iterations"],
        num_ppo_epochs=settings["ppo_epochs"],
        response_length=settings["max_new_tokens"],
        temperature=settings["temperature"],
        stop_token="eos",
        missing_eos_penalty=settings["missing_eos_penalty"],
        kl_coef=settings["kl_coef"],
        kl_estimator="k1",
        cliprange=settings["cliprange"],
        cliprange_value=settings["cliprange_value"],
        vf_coef=settings["vf_coef"],
        gamma=settings["gamma"],
        lam=settings["lam"],
        whiten_rewards=False,
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="constant",
        max_grad_norm=settings["max_grad_norm"],
        seed=settings["seed"],
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        save_strategy="no",
        num_sample_generations=0,
        logging_steps=1,
        disable_tqdm=True,
        sft_model_path=str(sft_dir),
        reward_model_path=str(rm_dir),
    )

    phases: dict[str, float] = defaultdict(float)
    original_generation = ppo_module.batch_generation
    original_get_reward = ppo_module.get_reward
    original_forward = ppo_module.forward

    def timed_generation(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original_generation(*args, **kwargs)
        finally:
            phases["generation"] += time.perf_counter() - started

    def timed_get_reward(model, query_responses, pad_token_id, context_length):
        started = time.perf_counter()
        try:
            if model is reward_model:
                # append "\n" after the EOS (chat-template text) before scoring; rows without EOS unchanged
                is_eos = query_responses[:, context_length:] == tokenizer.eos_token_id
                extended = torch.cat(
                    [query_responses, torch.full_like(query_responses[:, :1], pad_token_id)], dim=1
                )
                rows = torch.nonzero(is_eos.any(dim=1)).squeeze(1)
                first = is_eos.int().argmax(dim=1)
                extended[rows, context_length + first[rows] + 1] = newline_id[0]
                return original_get_reward(model, extended, pad_token_id, context_length)
            return original_get_reward(model, query_responses, pad_token_id, context_length)
        finally:
            phases["scoring" if model is reward_model else "value_forward"] += time.perf_counter() - started

    def timed_forward(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original_forward(*args, **kwargs)
        finally:
            phases["forward_train" if torch.is_grad_enabled() else "reference_forward"] += (
                time.perf_counter() - started
            )

    ppo_module.batch_generation = timed_generation
    ppo_module.get_reward = timed_get_reward
    ppo_module.forward = timed_forward

    # Self-check: the patched token path scores a reply exactly as the RM scores its chat-template text.
    query = encoded[0]
    reply = tokenizer.encode("A short reply.", add_special_tokens=False) + [tokenizer.eos_token_id]
    token_path = torch.tensor([query + reply + [tokenizer.pad_token_id] * 3])
    with torch.no_grad():
        _, via_tokens, _ = timed_get_reward(reward_model, token_path, tokenizer.pad_token_id, len(query))
        text = tokenizer.apply_chat_template(
            prompts[0]["prompt"] + [{"role": "assistant", "content": "A short reply."}],
            tokenize=True,
            return_dict=False,
        )
        hidden = reward_model.model(input_ids=torch.tensor([text])).last_hidden_state
        via_text = reward_model.score(hidden)[0, -1, 0]
    if abs(float(via_tokens[0]) - float(via_text)) > 1e-3:
        raise SystemExit(
            f"reward token path {float(via_tokens[0]):.4f} != chat-template text {float(via_text):.4f}"
        )
    phases.clear()
    print(
        f"reward self-check: token path {float(via_tokens[0]):.4f} = text {float(via_text):.4f}", flush=True
    )

    history: list[dict] = []

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs:
                history.append(dict(logs))

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        peft_config=peft_config,
        callbacks=[Record()],
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started

    samples = rollout * settings["iterations"]
    result = {
        "trainer": f"trl {trl.__version__} PPOTrainer",
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
        "train_seconds": train_seconds,
        "samples": samples,
        "samples_per_s": samples / train_seconds,
        "phases_s": dict(phases),
        "normalization_folded": folded,
        "log_history": history,
        "policy": str(out / "policy"),
    }
    (out / "result.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )  # before saving: the timings are kept

    # The merged weights under the plain model's names. After TRL's training, save_pretrained on the merged model
    # writes the adapter only (transformers' adapter flag is set), and with the flag cleared it writes keys
    # prefixed `base_model.model.` that a fresh AutoModelForCausalLM does not recognise (all its weights random).
    from safetensors.torch import save_file

    merged = trainer.model.policy.merge_and_unload()
    state = {
        k.removeprefix("base_model.model."): v.detach().contiguous() for k, v in merged.state_dict().items()
    }
    if policy.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    (out / "policy").mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "policy" / "model.safetensors"), metadata={"format": "pt"})
    policy.config.save_pretrained(out / "policy")
    policy.generation_config.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    print(json.dumps({k: result[k] for k in ("train_seconds", "samples_per_s", "phases_s")}))


if __name__ == "__main__":
    main()
