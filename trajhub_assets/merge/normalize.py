"""Wire formats → one message schema.

A recorded call (see `trajhub_assets.merge.merge` for the record) is read into a `Call`:
its prompt as unified messages, the assistant message(s) its response produced, and
its tools in OpenAI function form. Three wire formats: Anthropic messages, OpenAI chat
completions and OpenAI responses.

Unified message: role (system | user | assistant | tool), content (str: text blocks
concatenated, other blocks kept as a visible marker such as "[image]"),
reasoning_content (str or None), tool_calls (None or [{id, type, function: {name,
arguments (JSON string)}}]), tool_call_id, name, is_error (tool results), generation
(assistant only) and generated_by (the call that produced an assistant message).

`message_key` is what the merge compares: everything a client sends back when it
repeats a message, so not the reasoning (clients drop it) and with tool arguments in
canonical JSON (clients re-serialise them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trajhub_assets.errors import RecordError

WIRE_FORMATS = ("anthropic_messages", "openai_chat", "openai_responses")
TEXT_TYPES = {"text", "input_text", "output_text", "summary_text", "reasoning_text", "refusal"}
MARKERS = {"image_url": "[image]", "input_image": "[image]", "input_audio": "[audio]",
           "input_file": "[file]", "file": "[file]"}
# System prompt blocks and thinking blocks are separate sections; other text blocks
# are concatenated as sent.
SECTION_SEPARATOR = "\n\n"


@dataclass
class Call:
    """One recorded API call, normalized."""

    call_id: str
    seq: int
    started_at: float | None
    ended_at: float | None
    wire_format: str
    call_kind: str
    status: str
    error: Any
    prompt: list[dict]
    responses: list[dict]
    tools: list[dict]
    record: dict = field(repr=False)
    previous_response_id: str | None = None
    response_id: str | None = None


def message(role: str, content: str = "", *, reasoning_content: str | None = None,
            tool_calls: list[dict] | None = None, tool_call_id: str | None = None,
            name: str | None = None, is_error: bool | None = None) -> dict:
    return {"role": role, "content": content, "reasoning_content": reasoning_content,
            "tool_calls": tool_calls or None, "tool_call_id": tool_call_id, "name": name,
            "is_error": is_error, "generation": False if role == "assistant" else None,
            "generated_by": None}


def tool_call(id: str | None, name: str, arguments: str) -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
_ENCODE_SORTED = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


def canonical_arguments(arguments: str) -> str:
    try:
        return _ENCODE_SORTED(json.loads(arguments))
    except ValueError:
        return arguments


def message_key(m: dict, canonical=canonical_arguments) -> tuple:
    calls = m["tool_calls"]
    if calls:
        calls = tuple((c["id"], c["function"]["name"], canonical(c["function"]["arguments"])) for c in calls)
    return (m["role"], m["content"], calls, m["tool_call_id"], m["name"], m["is_error"])


class _Reader:
    """Reads one record; every error names the call and the field."""

    def __init__(self, record: dict, source: str):
        self.record, self.source = record, source
        self.call_id = record.get("call_id") if isinstance(record, dict) else None

    def fail(self, field: str, problem: str):
        raise RecordError(problem, source=self.source, record_id=self.call_id, field=field)

    def expect(self, value, types, field: str):
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            self.fail(field, f"expected {names}, got {type(value).__name__}")
        return value

    def text(self, content, field: str, separator: str = "") -> str:
        """Flatten a str or a list of content blocks to text, keeping markers for the rest."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        parts = []
        for i, block in enumerate(self.expect(content, list, field)):
            if isinstance(block, str):
                parts.append(block)
                continue
            kind = self.expect(block, dict, f"{field}[{i}]").get("type")
            if kind in TEXT_TYPES:
                parts.append(block.get("text") or block.get("refusal") or "")
            else:
                parts.append(MARKERS.get(kind, f"[{kind}]"))
        return separator.join(parts)

    def arguments(self, value) -> str:
        return value if isinstance(value, str) else _ENCODE(value)

    # -- Anthropic messages -----------------------------------------------------------
    def anthropic_assistant(self, content, field: str, names: dict) -> dict:
        if isinstance(content, str):
            return message("assistant", content)
        text, thinking, calls = [], [], []
        for i, block in enumerate(self.expect(content, list, field)):
            kind = self.expect(block, dict, f"{field}[{i}]").get("type")
            if kind == "text":
                text.append(block.get("text") or "")
            elif kind == "thinking":
                thinking.append(block.get("thinking") or "")
            elif kind == "redacted_thinking":
                thinking.append("[redacted_thinking]")
            elif kind == "tool_use":
                names[block.get("id")] = block.get("name")
                calls.append(tool_call(block.get("id"), block.get("name"),
                                       self.arguments(block.get("input", {}))))
            else:
                text.append(MARKERS.get(kind, f"[{kind}]"))
        return message("assistant", "".join(text), tool_calls=calls,
                       reasoning_content=SECTION_SEPARATOR.join(thinking) if thinking else None)

    def anthropic_user(self, content, field: str, names: dict) -> list[dict]:
        if isinstance(content, str):
            return [message("user", content)]
        out, text = [], []
        for i, block in enumerate(self.expect(content, list, field)):
            kind = self.expect(block, dict, f"{field}[{i}]").get("type")
            if kind == "tool_result":
                if text:
                    out.append(message("user", "".join(text)))
                    text = []
                call_id = block.get("tool_use_id")
                out.append(message("tool", self.text(block.get("content"), f"{field}[{i}].content"),
                                   tool_call_id=call_id, name=names.get(call_id),
                                   is_error=bool(block.get("is_error", False))))
            else:
                text.append(self.text([block], f"{field}[{i}]"))
        if text or not out:
            out.append(message("user", "".join(text)))
        return out

    def anthropic_prompt(self, request: dict) -> list[dict]:
        out, names = [], {}
        if request.get("system"):
            out.append(message("system", self.text(request["system"], "request.system", SECTION_SEPARATOR)))
        for i, m in enumerate(self.expect(request.get("messages", []), list, "request.messages")):
            field = f"request.messages[{i}]"
            role = self.expect(m, dict, field).get("role")
            if role == "assistant":
                out.append(self.anthropic_assistant(m.get("content"), f"{field}.content", names))
            elif role == "user":
                out.extend(self.anthropic_user(m.get("content"), f"{field}.content", names))
            else:
                self.fail(f"{field}.role", f"unknown role {role!r} for anthropic_messages")
        return out

    def anthropic_responses(self, response: dict) -> list[dict]:
        content = self.expect(response.get("content"), list, "response.content")
        return [self.anthropic_assistant(content, "response.content", {})]

    def anthropic_tools(self, tools: list) -> list[dict]:
        return [function_tool(t.get("name") or t.get("type"), t.get("description"), t.get("input_schema"))
                for t in tools]

    # -- OpenAI chat completions --------------------------------------------------------
    def chat_message(self, m: dict, field: str, names: dict) -> dict:
        role = self.expect(m, dict, field).get("role")
        if role in ("system", "developer"):
            return message("system", self.text(m.get("content"), f"{field}.content", SECTION_SEPARATOR))
        if role == "user":
            return message("user", self.text(m.get("content"), f"{field}.content"), name=m.get("name"))
        if role == "assistant":
            calls = []
            for j, c in enumerate(m.get("tool_calls") or []):
                function = self.expect(self.expect(c, dict, f"{field}.tool_calls[{j}]").get("function"),
                                       dict, f"{field}.tool_calls[{j}].function")
                names[c.get("id")] = function.get("name")
                calls.append(tool_call(c.get("id"), function.get("name"),
                                       self.arguments(function.get("arguments", "{}"))))
            reasoning = m.get("reasoning_content", m.get("reasoning"))
            return message("assistant", self.text(m.get("content"), f"{field}.content"), tool_calls=calls,
                           reasoning_content=reasoning if isinstance(reasoning, str) else None)
        if role in ("tool", "function"):
            call_id = m.get("tool_call_id")
            return message("tool", self.text(m.get("content"), f"{field}.content"), tool_call_id=call_id,
                           name=m.get("name") or names.get(call_id))
        self.fail(f"{field}.role", f"unknown role {role!r} for openai_chat")

    def chat_prompt(self, request: dict) -> list[dict]:
        names = {}
        return [self.chat_message(m, f"request.messages[{i}]", names)
                for i, m in enumerate(self.expect(request.get("messages", []), list, "request.messages"))]

    def chat_responses(self, response: dict) -> list[dict]:
        choices = self.expect(response.get("choices"), list, "response.choices")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        return [self.chat_message({**self.expect(c, dict, f"response.choices[{i}]").get("message", {}),
                                   "role": "assistant"}, f"response.choices[{i}].message", {})
                for i, c in enumerate(choices)]

    def chat_tools(self, tools: list) -> list[dict]:
        out = []
        for t in tools:
            function = t.get("function") or t
            out.append(function_tool(function.get("name") or t.get("type"), function.get("description"),
                                     function.get("parameters")))
        return out

    # -- OpenAI responses ---------------------------------------------------------------
    def response_items(self, items: list, field: str) -> list[dict]:
        """Input or output items; consecutive assistant-side items make one assistant message."""
        out, names, turn = [], {}, None
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            kind = self.expect(item, dict, where).get("type") or "message"
            role = item.get("role")
            if kind == "message" and role != "assistant":
                turn = None
                content = self.text(item.get("content"), f"{where}.content",
                                    SECTION_SEPARATOR if role in ("system", "developer") else "")
                if role in ("system", "developer"):
                    out.append(message("system", content))
                elif role == "user":
                    out.append(message("user", content))
                else:
                    self.fail(f"{where}.role", f"unknown role {role!r} for openai_responses")
            elif kind in ("function_call_output", "custom_tool_call_output"):
                turn = None
                call_id = item.get("call_id")
                out.append(message("tool", self.text(item.get("output"), f"{where}.output"),
                                   tool_call_id=call_id, name=names.get(call_id)))
            else:
                if turn is None:
                    turn = message("assistant")
                    out.append(turn)
                if kind == "message":
                    turn["content"] += self.text(item.get("content"), f"{where}.content")
                elif kind == "reasoning":
                    parts = item.get("content") or item.get("summary") or []
                    sections = [turn["reasoning_content"]] if turn["reasoning_content"] is not None else []
                    sections.append(self.text(parts, f"{where}.summary", SECTION_SEPARATOR))
                    turn["reasoning_content"] = SECTION_SEPARATOR.join(sections)
                elif kind in ("function_call", "custom_tool_call"):
                    names[item.get("call_id")] = item.get("name")
                    arguments = item.get("arguments") if kind == "function_call" else item.get("input")
                    turn["tool_calls"] = (turn["tool_calls"] or []) + [
                        tool_call(item.get("call_id"), item.get("name"), self.arguments(arguments or ""))]
                else:
                    turn["content"] += MARKERS.get(kind, f"[{kind}]")
        return out

    def responses_prompt(self, request: dict) -> list[dict]:
        out = []
        # A call chained by previous_response_id repeats the instructions, not the history.
        if request.get("instructions") and not request.get("previous_response_id"):
            out.append(message("system", self.text(request["instructions"], "request.instructions",
                                                   SECTION_SEPARATOR)))
        items = request.get("input", [])
        if isinstance(items, str):
            return out + [message("user", items)]
        return out + self.response_items(self.expect(items, list, "request.input"), "request.input")

    def responses_responses(self, response: dict) -> list[dict]:
        output = self.expect(response.get("output"), list, "response.output")
        messages = self.response_items(output, "response.output")
        return [m for m in messages if m["role"] == "assistant"] or [message("assistant")]


def function_tool(name, description, parameters) -> dict:
    return {"type": "function", "function": {"name": name or "", "description": description or "",
                                             "parameters": parameters or {}}}


_FORMATS = {
    "anthropic_messages": (_Reader.anthropic_prompt, _Reader.anthropic_responses, _Reader.anthropic_tools),
    "openai_chat": (_Reader.chat_prompt, _Reader.chat_responses, _Reader.chat_tools),
    "openai_responses": (_Reader.responses_prompt, _Reader.responses_responses, _Reader.chat_tools),
}


def read_call(record: dict, source: str = "calls") -> Call:
    """Normalize one call record; raises RecordError naming the call and the field."""
    reader = _Reader(record, source)
    reader.expect(record, dict, "record")
    call_id = reader.expect(record.get("call_id"), str, "call_id")
    wire_format = record.get("wire_format")
    if wire_format not in _FORMATS:
        reader.fail("wire_format", f"expected one of {list(WIRE_FORMATS)}, got {wire_format!r}")
    read_prompt, read_responses, read_tools = _FORMATS[wire_format]
    if record.get("seq") is not None:
        reader.expect(record["seq"], int, "seq")
    request = reader.expect(record.get("request"), dict, "request")
    status = record.get("status") or ("error" if record.get("error") else "ok")
    response = record.get("response")
    responses = []
    if status == "ok" and response is not None:
        responses = read_responses(reader, reader.expect(response, dict, "response"))
    tools = reader.expect(request.get("tools") or [], list, "request.tools")
    for i, t in enumerate(tools):
        reader.expect(t, dict, f"request.tools[{i}]")
    return Call(
        call_id=call_id, seq=record.get("seq"), started_at=record.get("started_at"),
        ended_at=record.get("ended_at"), wire_format=wire_format,
        call_kind=record.get("call_kind") or "agent", status=status, error=record.get("error"),
        prompt=read_prompt(reader, request), responses=responses, tools=read_tools(reader, tools),
        record=record, previous_response_id=request.get("previous_response_id"),
        response_id=response.get("id") if isinstance(response, dict) else None,
    )
