"""The model card of an artifact about to be pushed: its metadata (base model, license, datasets, tags) and its
body, assembled from the sections of alignment.hub.sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignment.hub.lineage import (
    BaseModel,
    DataRow,
    Node,
    adapter_base,
    base_model,
    data_rows,
    find_evaluations,
    ordered,
    read_lineage,
)
from alignment.hub.sections import (
    _configs_section,
    _data_section,
    _evaluation_section,
    _lineage_section,
    _metrics_section,
    _reward_section,
    _wandb_section,
)

# ------------------------------------------------------------------------------------------------ the card
STAGE_TAGS = {
    "sft": "sft",
    "reward": "reward-model",
    "dpo": "dpo",
    "ppo": "ppo",
    "grpo": "grpo",
    "rloo": "rloo",
}
RL_STAGES = ("reward", "ppo", "grpo", "rloo")
STAGE_WORDS = {
    "sft": "A supervised fine-tuned (SFT) policy",
    "reward": "A reward model",
    "dpo": "A policy trained with DPO",
    "ppo": "A policy trained with PPO (RLHF)",
    "grpo": "A policy trained with GRPO",
    "rloo": "A policy trained with RLOO",
}


def card_license(rows: list[DataRow], base: BaseModel) -> tuple[str | None, str | None]:
    """(license, license_name) for the card's metadata: the data's (and an embedded base's) licenses when every one
    is known; one license as itself, several as `other` named after them; (None, None) when any is unknown."""
    licenses = {row.origin.license for row in rows}
    if base.license:
        licenses.add(base.license)
    if not licenses or None in licenses:
        return None, None
    if len(licenses) == 1:
        return licenses.pop(), None
    return "other", "-and-".join(sorted(licenses))  # type: ignore[arg-type]


def build_card(
    artifact: str | Path,
    repo_id: str,
    eval_path: str | Path | None = None,
    base_model_override: str | None = None,
    wandb_entity: str | None = None,
) -> tuple[Any, Node, str | None]:
    """(ModelCard, lineage, adapter base repo or None) of an artifact about to be pushed to `repo_id`."""
    from huggingface_hub import ModelCard, ModelCardData

    node = read_lineage(artifact)
    base = base_model(node, base_model_override if node.model_kind != "adapter" else None)
    adapter_repo = adapter_base(node, base, base_model_override) if node.model_kind == "adapter" else None
    lineage = ordered(node)
    rows = data_rows(node)
    license_id, license_name = card_license(rows, base)
    stages = [n.stage for n in lineage]
    tags = ["alignment", "trl", *dict.fromkeys(STAGE_TAGS.get(s, s) for s in stages)]
    if any(s in RL_STAGES for s in stages):
        tags.append("rlhf")
    if node.model_kind == "adapter":
        model_section = node.section.get("model") or node.config.get("model") or {}
        tags += ["peft", str((model_section.get("tuning") or {}).get("method", "lora"))]
    datasets = list(dict.fromkeys(row.origin.hub_dataset for row in rows if row.origin.hub_dataset))
    data = ModelCardData(
        base_model=adapter_repo or base.hub_id,
        library_name="peft" if node.model_kind == "adapter" else "transformers",
        license=license_id,
        license_name=license_name,
        datasets=datasets or None,
        tags=tags,
        pipeline_tag="text-classification" if node.stage == "reward" else "text-generation",
        model_name=repo_id.split("/")[-1],
    )
    if adapter_repo or base.hub_id:
        data.base_model_relation = "adapter" if node.model_kind == "adapter" else "finetune"
    evaluations = find_evaluations(node, eval_path)
    body = "\n".join(
        [
            f"# {repo_id}",
            "",
            _summary(node, base, adapter_repo),
            "",
            *_how_to_load(node, repo_id, adapter_repo),
            *_lineage_section(node),
            *_data_section(rows, license_id, license_name, base),
            *_reward_section(lineage),
            *_evaluation_section(node, evaluations),
            *_metrics_section(node),
            *_wandb_section(lineage, wandb_entity),
            *_configs_section(lineage),
        ]
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    return card, node, adapter_repo


def _summary(node: Node, base: BaseModel, adapter_repo: str | None) -> str:
    kind = {"adapter": "a PEFT adapter", "merged": "merged weights (adapter folded in)"}.get(
        node.model_kind, "full weights"
    )
    chain = " -> ".join(f"{n.stage}" for n in ordered(node))
    text = (
        f"{STAGE_WORDS.get(node.stage, f'A {node.stage} model')}: {kind}, made with `alignment` "
        f"{node.manifest.get('code_version', '?')} (over TRL). Base model: {base.description}. Stages: {chain}."
    )
    if adapter_repo:
        text += f" The adapter applies to [{adapter_repo}](https://huggingface.co/{adapter_repo})."
    return text


def _how_to_load(node: Node, repo_id: str, adapter_repo: str | None) -> list[str]:
    if node.stage == "reward":
        code = [
            "import json, torch",
            "from huggingface_hub import hf_hub_download",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            f'stats = json.load(open(hf_hub_download("{repo_id}", "normalization.json")))',
            'messages = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]',
            "text = tokenizer.apply_chat_template(messages, tokenize=False)  # as in training",
            'batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)',
            "with torch.no_grad():",
            "    raw = model(**batch).logits[0, 0]",
            'score = (raw - stats["mean"]) / stats["std"]  # normalised as the policy stages used it',
        ]
        intro = "A sequence-classification reward model (one logit); scores are normalised with `normalization.json`."
    elif adapter_repo:
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # loads {adapter_repo}, then this adapter',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            "model = model.merge_and_unload()  # optional: plain transformers weights",
            'messages = [{"role": "user", "content": "2 + 2?"}]',
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        ]
        intro = (
            f"A PEFT adapter over [{adapter_repo}](https://huggingface.co/{adapter_repo}); load it with PEFT:"
        )
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            'messages = [{"role": "user", "content": "2 + 2?"}]',
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        ]
        intro = "Full weights (safetensors) with the tokenizer and chat template used in training; load with transformers:"
    return ["## How to load", "", intro, "", "```python", *code, "```", ""]
