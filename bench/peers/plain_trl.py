"""The plain-TRL side of `python -m bench stages --plain-trl`: TRL 1.16's SFTTrainer, RewardTrainer, DPOTrainer or
GRPOTrainer built directly from a settings file, with nothing of the project's training layer in the loop.

    python bench/peers/plain_trl.py --settings <dir>/settings.json --out <dir>

The orchestrator (bench/stages.py) writes, after our stage ran:
- `rows`: a jsonl of the rows our data layer handed our trainer (the same columns);
- `settings.json`: the stage, the weights our stage started from (`model`), the tokenizer our stage trained with
  (`tokenizer`: our artifact's), the weights' dtype, the TRL config's keyword arguments (the keys our stage's config
  set, the seed and the device flags, with our resolved values) and the LoRA settings (or null).
This script loads the model and tokenizer with `from_pretrained`, builds the TRL config and trainer the way TRL's
documentation does, trains, and writes `log_history.json` (the trainer's log: `train_runtime`, `num_tokens`) to
`--out`. It imports nothing from `alignment`. GRPO needs a reward function, the user's part of any GRPO run: here
the same gold checker as `rule:tasks` (`reward_models.rules.score_gold`, a pure function of the text).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def gold_reward(prompts: list[Any], completions: list[Any], gold: list[str], **_: Any) -> list[float]:
    """`rule:tasks` / `rule:gsm8k` as a TRL reward function: each row's gold spec (JSON text) against the reply."""
    sys.path.insert(0, str(REPO))
    from reward_models.rules import score_gold

    def text(completion: Any) -> str:
        if isinstance(completion, str):
            return completion
        return "".join(m["content"] for m in completion if m.get("role") == "assistant")

    return [score_gold(json.loads(spec), text(c).strip()) for spec, c in zip(gold, completions, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args(argv)
    settings = json.loads(Path(cli.settings).read_text())
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)

    import peft
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    stage = settings["stage"]
    rows = [json.loads(line) for line in Path(settings["rows"]).read_text().splitlines() if line]
    tokenizer = AutoTokenizer.from_pretrained(settings["tokenizer"])
    dtype = getattr(torch, settings["dtype"])
    config_class = {
        "sft": trl.SFTConfig,
        "reward": trl.RewardConfig,
        "dpo": trl.DPOConfig,
        "grpo": trl.GRPOConfig,
    }[stage]
    args = config_class(output_dir=str(out / "trainer"), report_to="none", **settings["trl_config"])
    lora = settings["lora"]
    peft_config = None
    if lora is not None:
        peft_config = peft.LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="SEQ_CLS" if stage == "reward" else "CAUSAL_LM",
        )

    set_seed(args.seed)  # before loading: a new score head (reward) starts from the seed
    if stage == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(
            settings["model"], num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)

    common = {
        "model": model,
        "args": args,
        "train_dataset": Dataset.from_list(rows),
        "processing_class": tokenizer,
        "peft_config": peft_config,
    }
    if stage == "sft":
        trainer = trl.SFTTrainer(**common)
    elif stage == "reward":
        trainer = trl.RewardTrainer(**common)
    elif stage == "dpo":
        trainer = trl.DPOTrainer(**common)
    else:
        trainer = trl.GRPOTrainer(reward_funcs=[gold_reward], **common)
    trainer.train()
    if trainer.accelerator.is_main_process:
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        print(f"[plain-trl {stage}] TRL {trl.__version__}: {out / 'log_history.json'}", flush=True)


if __name__ == "__main__":
    main()
