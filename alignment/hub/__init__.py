"""`alignment push`: publish an artifact to the Hugging Face Hub with a model card built from its lineage.

    alignment push runs/quickstart/dpo --repo my-org/smollm2-dpo --private --dry-run
    alignment push runs/quickstart/dpo --repo my-org/smollm2-dpo --private

What goes up: the weights (safetensors: full or merged weights, or a PEFT adapter), the tokenizer files, the chat
template, `resolved_config.yaml`, `MANIFEST.json`, `metrics.json`, `log_history.json`, a reward model's
`diagnostics.json`/`.md` and `normalization.json`, and a generated `README.md` (the model card). Never a pickle
(`.bin`, `.pt`, `.pkl`, ...): unpickling runs whatever code the file holds, so an artifact whose weights exist only
as pickles is refused, and stray pickles beside safetensors weights are left out.

The card is built from the artifact's lineage: the MANIFEST inputs are walked upstream (sft -> reward -> dpo/ppo),
each input's manifest hash checked against the one recorded downstream. It gives the base model, every stage with
its config hash and config, the data snapshots with their hashes, sources and licenses, the reward model's held-out
diagnostics when a reward model is in the lineage, evaluation figures with their 95% intervals (an `eval.json` given
with `--eval` or found beside the run), W&B links, and how to load the model (transformers, or PEFT for an adapter).

`--dry-run` prints the upload plan and writes the card and the plan under `--out` (default `runs/hub/<artifact>`)
without touching the network. Otherwise the repository is created (`HfApi.create_repo(exist_ok=True)`) and the
planned files go up in one commit (`HfApi.create_commit`); the token is huggingface_hub's own (`hf auth login` or
HF_TOKEN), never read out or printed.

The package, by part:
- `alignment.hub.lineage`: the artifact's lineage (MANIFEST inputs walked upstream, hash-checked), its base model,
  the data's origins and licenses, evaluations and W&B runs found for it;
- `alignment.hub.card`: the model card's metadata and its assembly, with how to load the model;
- `alignment.hub.sections`: the card's body sections (stages, data, reward model, evaluation, metrics, W&B, configs);
- `alignment.hub.upload`: the upload plan (what goes, what stays and why), the push through `HfApi`, and the
  command line.
"""

from __future__ import annotations

from alignment.hub.card import RL_STAGES, STAGE_TAGS, STAGE_WORDS, build_card, card_license
from alignment.hub.lineage import (
    BUILTIN_TASKS_LICENSE,
    DATA_NOTES,
    EMBEDDED_BASES,
    HUB_ID,
    KNOWN_DATA,
    LICENSE_TEXTS,
    BaseModel,
    DataOrigin,
    DataRow,
    HubError,
    Node,
    Upstream,
    adapter_base,
    base_model,
    data_origin,
    data_rows,
    find_evaluations,
    missing_inputs,
    ordered,
    pipeline_gold,
    read_lineage,
    wandb_text,
)
from alignment.hub.sections import EVAL_FIGURES
from alignment.hub.upload import (
    CARD,
    CHAT_TEMPLATE_FILES,
    PICKLE_SUFFIXES,
    RECORD_FILES,
    REWARD_FILES,
    TOKENIZER_FILES,
    WEIGHT_FILES,
    PlannedFile,
    UploadPlan,
    add_arguments,
    classify,
    describe,
    main,
    plan_upload,
    push,
)

__all__ = [
    "BUILTIN_TASKS_LICENSE",
    "BaseModel",
    "CARD",
    "CHAT_TEMPLATE_FILES",
    "DATA_NOTES",
    "DataOrigin",
    "DataRow",
    "EMBEDDED_BASES",
    "EVAL_FIGURES",
    "HUB_ID",
    "HubError",
    "KNOWN_DATA",
    "LICENSE_TEXTS",
    "Node",
    "PICKLE_SUFFIXES",
    "PlannedFile",
    "RECORD_FILES",
    "REWARD_FILES",
    "RL_STAGES",
    "STAGE_TAGS",
    "STAGE_WORDS",
    "TOKENIZER_FILES",
    "UploadPlan",
    "Upstream",
    "WEIGHT_FILES",
    "adapter_base",
    "add_arguments",
    "base_model",
    "build_card",
    "card_license",
    "classify",
    "data_origin",
    "data_rows",
    "describe",
    "find_evaluations",
    "main",
    "missing_inputs",
    "ordered",
    "pipeline_gold",
    "plan_upload",
    "push",
    "read_lineage",
    "wandb_text",
]
