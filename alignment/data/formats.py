"""Converters from the data formats people have to canonical conversational rows.

A converter takes one source record and the kind of rows a stage wants (`sft`, `preference`, `prompt`,
`unpaired`) and returns zero or more canonical rows (see alignment.data), or raises RowError with a reason code.
`detect_format` picks a converter from the keys of the first record; `format:` in the config forces one.

Formats: TRL's standard and conversational formats (language modeling, prompt-only, prompt-completion,
preference, implicit-prompt preference, unpaired preference, stepwise supervision), Alpaca, Dolly, ShareGPT,
self-instruct seed tasks, GSM8K, Anthropic HH dialogues, OpenAssistant message trees, and plain prompt lists
(OpenAssistant prompt lottery, MT-bench questions, self-instruct user-oriented instructions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from alignment.data.validate import RowError

Row = dict[str, Any]
Converter = Callable[[Any, str], list[Row]]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _field(record: Any, name: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(record, dict):
        raise RowError("wrong_type", f"expected a JSON object, got {type(record).__name__}")
    if name not in record or record[name] is None:
        raise RowError("missing_field", f"field {name!r} is missing")
    value = record[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise RowError("wrong_type", f"field {name!r} should be {expected}, got {type(value).__name__}")
    return value


def _as_prompt(value: Any, name: str = "prompt") -> list[dict[str, str]]:
    if isinstance(value, str):
        return [user(value)]
    if isinstance(value, list):
        return [dict(m) if isinstance(m, dict) else m for m in value]
    raise RowError("wrong_type", f"field {name!r} should be text or a list of messages")


def _as_reply(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [assistant(value)]
    if isinstance(value, list):
        return [dict(m) if isinstance(m, dict) else m for m in value]
    raise RowError("wrong_type", f"field {name!r} should be text or a list of messages")


def _extras(record: dict[str, Any], row: Row) -> Row:
    for key in ("source", "id", "gold", "margin"):
        if key in record and key not in row:
            row[key] = record[key]
    return row


def _unsupported(fmt: str, kind: str, produces: str) -> RowError:
    return RowError("unsupported_format", f"format {fmt!r} gives {produces} rows, not {kind!r} rows")


def _split_conversation(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, [last assistant message]) of a whole conversation."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise RowError("bad_role_order", "a conversation must end with an assistant message")
    return messages[:-1], [messages[-1]]


# ------------------------------------------------------------------------------------------------- TRL formats
def convert_language_modeling(record: Any, kind: str) -> list[Row]:
    if isinstance(record, dict) and "messages" in record:
        messages = _as_prompt(_field(record, "messages", list), "messages")
        prompt, completion = _split_conversation(messages)
        if kind == "sft":
            return [_extras(record, {"prompt": prompt, "completion": completion})]
        if kind == "prompt":
            return [_extras(record, {"prompt": prompt})]
        raise _unsupported("language_modeling", kind, "sft/prompt")
    text = _field(record, "text")
    if kind == "sft":
        return [_extras(record, {"text": text})]
    raise _unsupported("language_modeling", kind, "sft")


def convert_prompt_only(record: Any, kind: str) -> list[Row]:
    if kind != "prompt":
        raise _unsupported("prompt_only", kind, "prompt")
    return [_extras(record, {"prompt": _as_prompt(_field(record, "prompt", (str, list)))})]


def convert_prompt_completion(record: Any, kind: str) -> list[Row]:
    prompt = _as_prompt(_field(record, "prompt", (str, list)))
    if kind == "prompt":
        return [_extras(record, {"prompt": prompt})]
    if kind != "sft":
        raise _unsupported("prompt_completion", kind, "sft/prompt")
    completion = _as_reply(_field(record, "completion", (str, list)), "completion")
    return [_extras(record, {"prompt": prompt, "completion": completion})]


def _strip_prompt(reply: list[dict[str, str]], prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """Some sets (UltraFeedback binarized) repeat the prompt inside chosen/rejected: keep the reply only."""
    if len(reply) > 1 and reply[: len(prompt)] == prompt:
        return reply[len(prompt) :]
    return reply


def convert_preference(record: Any, kind: str) -> list[Row]:
    prompt = _as_prompt(_field(record, "prompt", (str, list)))
    chosen = _strip_prompt(_as_reply(_field(record, "chosen", (str, list)), "chosen"), prompt)
    rejected = _strip_prompt(_as_reply(_field(record, "rejected", (str, list)), "rejected"), prompt)
    if kind == "preference":
        return [_extras(record, {"prompt": prompt, "chosen": chosen, "rejected": rejected})]
    if kind == "sft":
        return [_extras(record, {"prompt": prompt, "completion": chosen})]
    if kind == "prompt":
        return [_extras(record, {"prompt": prompt})]
    raise _unsupported("preference", kind, "preference/sft/prompt")


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def convert_implicit_preference(record: Any, kind: str) -> list[Row]:
    """{"chosen", "rejected"} holding whole texts or whole conversations: the shared part is the prompt."""
    chosen = _field(record, "chosen", (str, list))
    rejected = _field(record, "rejected", (str, list))
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt_c, reply_c = _split_conversation(_as_prompt(chosen, "chosen"))
        prompt_r, reply_r = _split_conversation(_as_prompt(rejected, "rejected"))
        if prompt_c != prompt_r:
            raise RowError("missing_field", "chosen and rejected conversations do not share a prompt")
        return convert_preference(
            {**record, "prompt": prompt_c, "chosen": reply_c, "rejected": reply_r}, kind
        )
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowError("wrong_type", "chosen and rejected must both be text or both be message lists")
    cut = _common_prefix(chosen, rejected)
    # Back up to a word boundary so neither reply starts mid-word.
    while cut > 0 and not chosen[cut - 1].isspace():
        cut -= 1
    prompt = chosen[:cut].strip()
    if not prompt:
        raise RowError("missing_field", "chosen and rejected share no prompt text")
    return convert_preference(
        {**record, "prompt": prompt, "chosen": chosen[cut:].strip(), "rejected": rejected[cut:].strip()}, kind
    )


def convert_unpaired(record: Any, kind: str) -> list[Row]:
    prompt = _as_prompt(_field(record, "prompt", (str, list)))
    completion = _as_reply(_field(record, "completion", (str, list)), "completion")
    label = _field(record, "label", bool)
    if kind == "unpaired":
        return [_extras(record, {"prompt": prompt, "completion": completion, "label": label})]
    if kind == "sft":
        return [_extras(record, {"prompt": prompt, "completion": completion})] if label else []
    if kind == "prompt":
        return [_extras(record, {"prompt": prompt})]
    raise _unsupported("unpaired_preference", kind, "unpaired/sft/prompt")


def convert_stepwise(record: Any, kind: str) -> list[Row]:
    """Stepwise supervision: the steps joined are one completion (SFT only when every step is labelled good)."""
    prompt = _as_prompt(_field(record, "prompt", (str, list)))
    steps = _field(record, "completions", list)
    labels = _field(record, "labels", list)
    if kind == "prompt":
        return [_extras(record, {"prompt": prompt})]
    if kind != "sft":
        raise _unsupported("stepwise_supervision", kind, "sft/prompt")
    if not all(isinstance(s, str) for s in steps):
        raise RowError("wrong_type", "completions must be a list of text steps")
    if not all(labels):
        return []
    return [_extras(record, {"prompt": prompt, "completion": [assistant("".join(steps).strip())]})]


# ---------------------------------------------------------------------------------------------- instruction sets
def _instruction_with_context(instruction: str, context: str) -> str:
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def _sft_or_prompt(record: dict[str, Any], fmt: str, kind: str, prompt_text: str, reply: str) -> list[Row]:
    if kind == "sft":
        return [_extras(record, {"prompt": [user(prompt_text)], "completion": [assistant(reply)]})]
    if kind == "prompt":
        return [_extras(record, {"prompt": [user(prompt_text)]})]
    raise _unsupported(fmt, kind, "sft/prompt")


def convert_alpaca(record: Any, kind: str) -> list[Row]:
    instruction = _field(record, "instruction")
    prompt = _instruction_with_context(instruction, record.get("input") or "")
    return _sft_or_prompt(record, "alpaca", kind, prompt, _field(record, "output") if kind == "sft" else "")


def convert_dolly(record: Any, kind: str) -> list[Row]:
    instruction = _field(record, "instruction")
    prompt = _instruction_with_context(instruction, record.get("context") or "")
    return _sft_or_prompt(record, "dolly", kind, prompt, _field(record, "response") if kind == "sft" else "")


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def convert_sharegpt(record: Any, kind: str) -> list[Row]:
    turns = _field(record, "conversations", list)
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError("missing_field", "each conversation turn needs `from` and `value`")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RowError("wrong_type", f"unknown ShareGPT speaker {turn['from']!r}")
        messages.append({"role": role, "content": turn["value"]})
    return convert_language_modeling({**record, "messages": messages}, kind)


def convert_self_instruct(record: Any, kind: str) -> list[Row]:
    """Self-instruct seed tasks: one row per instance."""
    instruction = _field(record, "instruction")
    instances = _field(record, "instances", list)
    rows: list[Row] = []
    for instance in instances:
        prompt = _instruction_with_context(instruction, instance.get("input") or "")
        rows += _sft_or_prompt(
            {"id": record.get("id")} if record.get("id") else {},
            "self_instruct",
            kind,
            prompt,
            instance.get("output", "") if kind == "sft" else "",
        )
    return rows


def convert_user_oriented(record: Any, kind: str) -> list[Row]:
    """Self-instruct's expert-written user-oriented tasks. Evaluation only: its authors ask not to train on it."""
    instruction = _field(record, "instruction")
    instances = _field(record, "instances", list)
    first = instances[0] if instances else {}
    prompt = _instruction_with_context(instruction, first.get("input") or "")
    return _sft_or_prompt(
        {"id": record.get("id"), "source": record.get("motivation_app")},
        "user_oriented",
        kind,
        prompt,
        first.get("output", "") if kind == "sft" else "",
    )


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def convert_gsm8k(record: Any, kind: str) -> list[Row]:
    question = _field(record, "question")
    answer = _field(record, "answer")
    match = _GSM8K_FINAL.search(answer)
    if match is None:
        raise RowError("missing_field", "GSM8K answer has no final `#### <number>`")
    gold = {"type": "gsm8k", "answer": match.group(1).replace(",", "")}
    row = {"prompt": [user(question)], "gold": gold, "source": "gsm8k"}
    if kind == "sft":
        return [{**row, "completion": [assistant(answer)]}]
    if kind == "prompt":
        return [row]
    raise _unsupported("gsm8k", kind, "sft/prompt")


def convert_gsm8k_solutions(record: Any, kind: str) -> list[Row]:
    """GSM8K example model solutions with `is_correct` labels: every (correct, incorrect) pair of one question.

    The data set's README asks never to train on pairs of a question you also evaluate on: the held-out split
    groups rows by prompt, so all pairs of a question fall on one side.
    """
    question = _field(record, "question")
    solutions = [v for v in record.values() if isinstance(v, dict) and "is_correct" in v and "solution" in v]
    if not solutions:
        raise RowError("missing_field", "no model solutions with `is_correct` labels")
    prompt = [user(question)]
    if kind == "prompt":
        return [{"prompt": prompt, "source": "gsm8k"}]
    good = [s["solution"] for s in solutions if s["is_correct"]]
    bad = [s["solution"] for s in solutions if not s["is_correct"]]
    if kind == "sft":
        return [{"prompt": prompt, "completion": [assistant(text)], "source": "gsm8k"} for text in good[:1]]
    if kind != "preference":
        raise _unsupported("gsm8k_solutions", kind, "preference/sft/prompt")
    return [
        {"prompt": prompt, "chosen": [assistant(g)], "rejected": [assistant(b)], "source": "gsm8k"}
        for g in good
        for b in bad
        if g.strip() != b.strip()
    ]


# -------------------------------------------------------------------------------------------- preference sets
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("bad_role_order", "HH dialogue must start with '\\n\\nHuman:'")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def convert_hh(record: Any, kind: str) -> list[Row]:
    """Anthropic HH: both sides share everything up to the last '\\n\\nAssistant:'."""
    chosen = _field(record, "chosen")
    rejected = _field(record, "rejected")
    marker = "\n\nAssistant:"
    cut_c, cut_r = chosen.rfind(marker), rejected.rfind(marker)
    if cut_c < 0 or cut_r < 0:
        raise RowError("missing_field", "HH dialogue has no '\\n\\nAssistant:' turn")
    if chosen[:cut_c] != rejected[:cut_r]:
        raise RowError(
            "missing_field", "chosen and rejected dialogues differ before their last assistant turn"
        )
    prompt = parse_hh_dialogue(chosen[:cut_c])
    row = {
        "prompt": prompt,
        "chosen": [assistant(chosen[cut_c + len(marker) :].strip())],
        "rejected": [assistant(rejected[cut_r + len(marker) :].strip())],
        "source": record.get("source", "hh-rlhf"),
    }
    return convert_preference(row, kind)


def _oasst_role(node: dict[str, Any]) -> str:
    return "user" if node.get("role") == "prompter" else "assistant"


def convert_oasst_tree(record: Any, kind: str) -> list[Row]:
    """OpenAssistant message trees: ranked sibling replies -> pairs; rank-0 replies -> SFT rows."""
    root = _field(record, "prompt", dict)
    rows: list[Row] = []
    tree_id = record.get("message_tree_id", "")

    def visit(node: dict[str, Any], path: list[dict[str, str]]) -> None:
        text = node.get("text")
        if not isinstance(text, str):
            raise RowError("missing_field", "OpenAssistant message without text")
        conversation = path + [{"role": _oasst_role(node), "content": text}]
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        if _oasst_role(node) == "user":
            if kind == "prompt":
                rows.append({"prompt": conversation, "id": node.get("message_id", ""), "source": "oasst"})
            ranked = sorted((r for r in replies if r.get("rank") is not None), key=lambda r: r["rank"])
            if kind == "sft" and ranked and ranked[0]["rank"] == 0:
                rows.append(
                    {
                        "prompt": conversation,
                        "completion": [assistant(ranked[0]["text"])],
                        "id": ranked[0].get("message_id", ""),
                        "source": "oasst",
                    }
                )
            if kind == "preference":
                for i, better in enumerate(ranked):
                    for worse in ranked[i + 1 :]:
                        if better["rank"] == worse["rank"]:
                            continue
                        rows.append(
                            {
                                "prompt": conversation,
                                "chosen": [assistant(better["text"])],
                                "rejected": [assistant(worse["text"])],
                                "id": f"{better.get('message_id', '')}>{worse.get('message_id', '')}",
                                "source": "oasst",
                                "margin": float(worse["rank"] - better["rank"]),
                            }
                        )
        for reply in replies:
            visit(reply, conversation)

    if kind not in ("sft", "preference", "prompt"):
        raise _unsupported("oasst_tree", kind, "sft/preference/prompt")
    visit(root, [])
    for row in rows:
        row.setdefault("id", tree_id)
    return rows


def convert_prompt_text(record: Any, kind: str) -> list[Row]:
    """A bare JSON string per line (OpenAssistant prompt lottery)."""
    if not isinstance(record, str):
        raise RowError("wrong_type", "expected a JSON string")
    if kind != "prompt":
        raise _unsupported("prompt_text", kind, "prompt")
    return [{"prompt": [user(record)]}]


def convert_mt_bench(record: Any, kind: str) -> list[Row]:
    """MT-bench questions: the first turn is the prompt (the second needs the model's own first answer)."""
    turns = _field(record, "turns", list)
    if kind != "prompt":
        raise _unsupported("mt_bench", kind, "prompt")
    if not turns or not isinstance(turns[0], str):
        raise RowError("missing_field", "MT-bench question without turns")
    return [
        {
            "prompt": [user(turns[0])],
            "id": str(record.get("question_id", "")),
            "source": record.get("category", "mt-bench"),
        }
    ]


FORMATS: dict[str, Converter] = {
    "language_modeling": convert_language_modeling,
    "prompt_only": convert_prompt_only,
    "prompt_completion": convert_prompt_completion,
    "preference": convert_preference,
    "implicit_preference": convert_implicit_preference,
    "unpaired_preference": convert_unpaired,
    "stepwise_supervision": convert_stepwise,
    "alpaca": convert_alpaca,
    "dolly": convert_dolly,
    "sharegpt": convert_sharegpt,
    "self_instruct": convert_self_instruct,
    "user_oriented": convert_user_oriented,
    "gsm8k": convert_gsm8k,
    "gsm8k_solutions": convert_gsm8k_solutions,
    "hh": convert_hh,
    "oasst_tree": convert_oasst_tree,
    "prompt_text": convert_prompt_text,
    "mt_bench": convert_mt_bench,
}


def _is_hh_text(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.lstrip(" ").startswith("\n\nHuman:")
        or (isinstance(value, str) and value.startswith("Human:"))
    )


def detect_format(record: Any) -> str:
    """The converter name for a record, from its keys; ValueError when nothing matches."""
    if isinstance(record, str):
        return "prompt_text"
    if not isinstance(record, dict):
        raise ValueError(f"cannot detect the format of a {type(record).__name__} record")
    keys = set(record)
    if "message_tree_id" in keys or ("prompt" in keys and isinstance(record["prompt"], dict)):
        return "oasst_tree"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"question", "ground_truth"} <= keys:
        return "gsm8k_solutions"
    if "conversations" in keys:
        return "sharegpt"
    if "instances" in keys and "instruction" in keys:
        return "user_oriented" if "motivation_app" in keys else "self_instruct"
    if "turns" in keys and "question_id" in keys:
        return "mt_bench"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if {"completions", "labels"} <= keys:
        return "stepwise_supervision"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            return "preference"
        return "hh" if _is_hh_text(record["chosen"]) else "implicit_preference"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired_preference"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "prompt" in keys:
        return "prompt_only"
    if "text" in keys or "messages" in keys:
        return "language_modeling"
    raise ValueError(f"cannot detect the data format from the keys {sorted(keys)}; set `format:` explicitly")
