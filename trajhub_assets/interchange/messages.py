"""Merged conversations ↔ OpenAI chat / TRL conversational records (one JSONL line each).

A line is what TRL's SFT trainer and OpenAI's chat format read:
`{"messages": [{role, content, reasoning_content, tool_calls, tool_call_id, name}], "tools": [...]}`
with messages exactly as `preference_pairs` writes them (`pairs.chat_message`: content a
string, tool calls in OpenAI form with arguments as the JSON string the model generated) and
tools in OpenAI function form. Beside them, `trajhub` holds what the format cannot say: the
meta, and per message only the fields an importer would rebuild wrongly (`generation` of an
assistant message that was not generated, `generated_by`, `is_error`, a null content,
`thinking_blocks`, `content_parts`, `extra`), so export → import gives back the same
conversation.

Lines from elsewhere import with defaults: content may also be a list of parts (text joined,
other parts as markers), tool arguments an object, role `developer` is a system message, an
assistant message is a generation, a tool result's name comes from the call it answers.
"""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from trajhub_assets.errors import RecordError
from trajhub_assets.interchange.formats import TRAJHUB, check_schema, content_text, differences
from trajhub_assets.merge.merge import _fill_tool_names
from trajhub_assets.merge.normalize import function_tool, message, tool_call
from trajhub_assets.pairs.pairs import chat_message

_NULLABLE_STRING = {"type": ["string", "null"]}
_TOOL_CALL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "id": _NULLABLE_STRING,
        "type": {"type": "string"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": ["string", "object"]}},
        },
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": {"type": ["object", "string"]}}]
        },
        "reasoning_content": _NULLABLE_STRING,
        "tool_calls": {"type": ["array", "null"], "items": _TOOL_CALL},
        "tool_call_id": _NULLABLE_STRING,
        "name": _NULLABLE_STRING,
    },
}
_TOOL = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "description": _NULLABLE_STRING,
                "parameters": {"type": "object"},
            },
        },
    },
}
LINE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "tools": {"type": ["array", "null"], "items": _TOOL},
        TRAJHUB: {
            "type": "object",
            "properties": {
                "meta": {"type": "object"},
                "tools": {"type": "array"},
                "messages": {"type": "array", "items": {"type": ["object", "null"]}},
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(LINE_SCHEMA)


def _arguments(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _message(chat: dict) -> dict:
    """A merged message as a reader of the plain format would rebuild it."""
    role = "system" if chat["role"] == "developer" else chat["role"]
    calls = [
        tool_call(c.get("id"), c["function"]["name"], _arguments(c["function"].get("arguments", "{}")))
        | {"type": c.get("type") or "function"}
        for c in chat.get("tool_calls") or []
    ]
    derived = message(
        role,
        content_text(chat.get("content")),
        reasoning_content=chat.get("reasoning_content"),
        tool_calls=calls,
        tool_call_id=chat.get("tool_call_id"),
        name=chat.get("name"),
    )
    if role == "assistant":
        derived["generation"] = True
    return derived


def _messages(chats: list[dict]) -> list[dict]:
    messages = [_message(chat) for chat in chats]
    _fill_tool_names(messages)
    return messages


def _tools(tools: list[dict] | None) -> list[dict]:
    return [
        function_tool(t["function"]["name"], t["function"].get("description"), t["function"].get("parameters"))
        if "function" in t
        else function_tool(t.get("name"), t.get("description"), t.get("parameters"))
        for t in tools or []
    ]


def conversation_to_chat(conversation: dict) -> dict:
    """One merged conversation as an OpenAI / TRL record."""
    chats = [chat_message(m) for m in conversation["messages"]]
    kept = [
        differences(actual, derived) or None
        for actual, derived in zip(conversation["messages"], _messages(chats), strict=True)
    ]
    ours = {"meta": conversation["meta"], "messages": kept}
    if _tools(conversation["tools"]) != conversation["tools"]:
        ours["tools"] = conversation["tools"]
    return {"messages": chats, "tools": conversation["tools"], TRAJHUB: ours}


def chat_to_conversation(record, *, source: str = "openai", line: int | None = None) -> dict:
    """The conversation of one record, validated first; errors name `source`, `line` and the field.
    A record without trajhub's meta gets one for a run with no recorded calls."""
    check_schema(
        _VALIDATOR,
        record,
        source=source,
        line=line,
        record_of=lambda path: f"message {path[1]}" if path[:1] == ["messages"] and len(path) > 1 else None,
    )
    messages = _messages(record["messages"])
    ours = record.get(TRAJHUB) or {}
    kept = ours.get("messages")
    if kept is not None:
        if len(kept) != len(messages):
            raise RecordError(
                f"holds {len(kept)} entries for {len(messages)} messages",
                source=source,
                line=line,
                field=f"{TRAJHUB}.messages",
            )
        messages = [m | (k or {}) for m, k in zip(messages, kept, strict=True)]
    meta = ours.get("meta") or {
        "conversation_id": None,
        "run_id": None,
        "model": None,
        "instance": None,
        "attempt": None,
        "kind": "main",
        "parent_conversation_id": None,
        "parent_link": None,
        "branch_index": None,
        "call_ids": [],
        "failed_call_ids": [],
        "call_kinds": [],
        "n_generations": sum(bool(m["generation"]) for m in messages),
        "started_at": None,
        "ended_at": None,
        "wire_format": None,
        "tools_changed": False,
        "error": None,
        "source": source,
    }
    return {"meta": meta, "tools": ours.get("tools", _tools(record.get("tools"))), "messages": messages}
