"""Pure, reason-coded validation of canonical rows.

Every function here takes plain data and returns a reason code (or None); nothing is dropped or truncated here.
The loader turns codes into rejects with file and line, and the stage decides whether there are too many.
"""

from __future__ import annotations

from typing import Any

REASONS: dict[str, str] = {
    "malformed_json": "the line is not valid JSON",
    "missing_field": "a field the format needs is absent",
    "wrong_type": "a field has the wrong type (e.g. a number where text is expected)",
    "empty_text": "a prompt, response or message is empty or only whitespace",
    "identical_pair": "chosen and rejected responses are the same text",
    "bad_role_order": "roles do not alternate user/assistant after an optional leading system message",
    "too_long": "longer than max_length tokens (reported, never truncated)",
    "unsupported_format": "the record's format cannot produce rows of this kind",
}

ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A conversion or validation failure with its reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_messages(messages: Any, where: str, last_role: str | None = None) -> str | None:
    """Reason code for a malformed message list, or None. `last_role` is the role the list must end with."""
    if not isinstance(messages, list) or not messages:
        return "missing_field" if not messages else "wrong_type"
    previous = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return "missing_field"
        if not isinstance(message["content"], str) or message["role"] not in ROLES:
            return "wrong_type"
        if not message["content"].strip():
            return "empty_text"
        role = message["role"]
        if role == "system":
            if index != 0:
                return "bad_role_order"
        elif previous == role or (previous in (None, "system") and role != "user" and where == "prompt"):
            return "bad_role_order"
        previous = role
    if last_role is not None and previous != last_role:
        return "bad_role_order"
    return None


def _reply(messages: Any) -> str | None:
    """Reason code for a one-message assistant reply list, or None."""
    if not isinstance(messages, list) or len(messages) != 1:
        return "wrong_type" if messages else "missing_field"
    return check_messages(messages, "reply", last_role="assistant")


def validate_row(row: dict[str, Any], kind: str) -> str | None:
    """Reason code for a canonical row of `kind` (sft, preference, prompt, unpaired), or None when valid."""
    if kind == "sft" and "text" in row:
        if not isinstance(row["text"], str):
            return "wrong_type"
        return "empty_text" if not row["text"].strip() else None
    if "prompt" not in row:
        return "missing_field"
    reason = check_messages(row["prompt"], "prompt", last_role="user")
    if reason:
        return reason
    if kind == "prompt":
        return None
    if kind in ("sft", "unpaired"):
        if "completion" not in row:
            return "missing_field"
        if kind == "unpaired" and not isinstance(row.get("label"), bool):
            return "missing_field" if "label" not in row else "wrong_type"
        return _reply(row["completion"])
    if kind == "preference":
        for side in ("chosen", "rejected"):
            if side not in row:
                return "missing_field"
            reason = _reply(row[side])
            if reason:
                return reason
        if row["chosen"][0]["content"].strip() == row["rejected"][0]["content"].strip():
            return "identical_pair"
        return None
    raise ValueError(f"unknown row kind {kind!r}; use sft, preference, prompt or unpaired")
