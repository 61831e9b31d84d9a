"""Wire formats → one message schema.

A recorded call (see `trajhub_assets.merge.merge` for the record) is read into a `Call`:
its prompt as unified messages, the assistant message(s) its response produced, and
its tools in OpenAI function form. Three wire formats: Anthropic messages, OpenAI chat
completions and OpenAI responses.

Unified message: role (system | user | assistant | tool), content (str: text blocks
concatenated, other blocks kept as a visible marker such as "[image]"; None where the
wire sent null), reasoning_content (str or None), tool_calls (None or [{id, type,
function: {name, arguments (JSON string)}}]), tool_call_id, name, is_error (tool
results), generation (assistant only), generated_by (the call that produced an
assistant message), content_parts (the blocks in order, when content and the other
fields cannot say it: [{type, text, media_type, ref}], a media payload by reference),
thinking_blocks ([{type, thinking, signature, data}] as the model sent them) and extra
(a JSON object of every other non-null field, keyed by its path in the message).

`message_key` is what the merge compares: everything a client sends back when it
repeats a message, so not the reasoning (clients drop it), null content as "", no error
flag as false and with tool arguments in canonical JSON (clients re-serialise them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from trajhub_assets.errors import RecordError

WIRE_FORMATS = ("anthropic_messages", "openai_chat", "openai_responses")
TEXT_TYPES = {"text", "input_text", "output_text", "summary_text", "reasoning_text", "refusal"}
MEDIA_TYPES = {"image", "document", "image_url", "input_image", "input_audio", "input_file", "file"}
MARKERS = {
    "image": "[image]",
    "document": "[document]",
    "image_url": "[image]",
    "input_image": "[image]",
    "input_audio": "[audio]",
    "input_file": "[file]",
    "file": "[file]",
}
# System prompt blocks and thinking blocks are separate sections; other text blocks
# are concatenated as sent.
SECTION_SEPARATOR = "\n\n"
TRANSPORT_FIELDS = {"cache_control"}  # prompt-cache hints: how a block was sent, not what it says
# A block list in this order (thinking, at most one text, tool calls) is said by the flat
# fields; any other list is also kept as content_parts.
FLAT_ORDER = {"thinking": 0, "redacted_thinking": 0, "reasoning": 0, "text": 1, "tool_use": 2}
# Providers (litellm_model "<provider>/...") by the body litellm sends them. Any other provider
# (gemini, bedrock, minimax: native or ambiguous bodies) is not read: its calls fall back to
# `request`, marked.
ANTHROPIC_PROVIDERS = {"anthropic"}
OPENAI_COMPATIBLE_PROVIDERS = {
    "openai",
    "azure",
    "hosted_vllm",
    "openrouter",
    "deepseek",
    "groq",
    "together_ai",
    "fireworks_ai",
    "xai",
    "deepinfra",
    "lm_studio",
    "litellm_proxy",
}


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
    prompt_from: str = "request"  # the record field prompt and tools were read from
    upstream_unread: bool = False  # it has an upstream_request in a format we cannot tell
    previous_response_id: str | None = None
    response_id: str | None = None


def message(
    role: str,
    content: str | None = "",
    *,
    reasoning_content: str | None = None,
    tool_calls: list[dict] | None = None,
    tool_call_id: str | None = None,
    name: str | None = None,
    is_error: bool | None = None,
    content_parts: list[dict] | None = None,
    thinking_blocks: list[dict] | None = None,
    extra: dict | None = None,
) -> dict:
    return {
        "role": role,
        "content": content,
        "reasoning_content": reasoning_content,
        "tool_calls": tool_calls or None,
        "tool_call_id": tool_call_id,
        "name": name,
        "is_error": is_error,
        "generation": False if role == "assistant" else None,
        "generated_by": None,
        "content_parts": content_parts,
        "thinking_blocks": None if not thinking_blocks or _said_by_reasoning(thinking_blocks) else thinking_blocks,
        "extra": extra or None,
    }  # a dict while reading; read_call encodes it as JSON


def part(type: str, text: str | None = None, media_type: str | None = None, ref: str | None = None) -> dict:
    return {"type": type, "text": text, "media_type": media_type, "ref": ref}


def thinking_block(
    type: str, thinking: str | None = None, signature: str | None = None, data: str | None = None
) -> dict:
    return {"type": type, "thinking": thinking, "signature": signature, "data": data}


def _said_by_reasoning(blocks: list[dict]) -> bool:
    """One thinking block without a signature: reasoning_content holds all of it."""
    return len(blocks) == 1 and blocks[0]["type"] == "thinking" and blocks[0]["signature"] is None


def _flat(parts: list[dict]) -> bool:
    ranks = [FLAT_ORDER.get("text" if p["type"] in TEXT_TYPES else p["type"], -1) for p in parts]
    return -1 not in ranks and ranks == sorted(ranks) and ranks.count(1) <= 1


def tool_call(id: str | None, name: str, arguments: str) -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
_ENCODE_SORTED = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


def canonical_arguments(arguments: str, defaults: dict | None = None) -> str:
    """Tool arguments as sorted JSON, without those at their schema `default`: a client that
    re-serialises a call it generated may fill them in (Claude Code's Edit `replace_all`)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if defaults and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in defaults or defaults[k] != v}
    return _ENCODE_SORTED(value)


def argument_defaults(tools: list[dict]) -> dict[str, dict]:
    """Tool name -> {argument: the default its JSON schema declares}, for OpenAI-form tools."""
    found = {}
    for tool in tools:
        function = tool.get("function") or {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        defaults = {k: p["default"] for k, p in properties.items() if isinstance(p, dict) and "default" in p}
        if defaults:
            found[function.get("name")] = defaults
    return found


def message_key(m: dict, canonical=lambda name, arguments: canonical_arguments(arguments)) -> tuple:
    calls, parts = m["tool_calls"], m.get("content_parts")
    if calls:
        calls = tuple(
            [
                (c["id"], c["function"]["name"], canonical(c["function"]["name"], c["function"]["arguments"]))
                for c in calls
            ]
        )
    # Two images with the same caption are different messages; their refs tell them apart.
    media = tuple([p["ref"] for p in parts if p["ref"] is not None and p["type"] != "tool_use"]) if parts else ()
    # OpenAI chat has no error flag (None), Anthropic always sends one: a tool result read from
    # either body of one run is the same message.
    return (m["role"], m["content"] or "", calls, m["tool_call_id"], m["name"], bool(m["is_error"]), media)


def media_reference(block: dict, kind: str) -> tuple[dict, str | None, str | None]:
    """A media block's (other fields, media type, ref): a URL or file id as sent, a base64
    payload as "sha256:<hex of its text>" (the payload stays in the recorded call)."""
    nested = block.get(kind)
    if isinstance(block.get("source"), dict):  # Anthropic: {"type": "image", "source": {...}}
        fields = {k: v for k, v in block.items() if k not in ("type", "source")} | block["source"]
    elif isinstance(nested, dict):  # OpenAI chat: {"type": "image_url", "image_url": {"url": ...}}
        fields = {k: v for k, v in block.items() if k not in ("type", kind)} | nested
    else:  # OpenAI responses, or a bare URL string
        fields = {("url" if k == kind else k): v for k, v in block.items() if k != "type"}
    fields.pop("type", None)
    media_type = fields.pop("media_type", None) or fields.pop("mime_type", None) or fields.pop("format", None)
    data = fields.pop("data", None) or fields.pop("file_data", None)
    url = fields.pop("url", None) or fields.pop("image_url", None) or fields.pop("file_url", None)
    file_id = fields.pop("file_id", None)
    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = media_type or header[5:].split(";")[0] or None
        url = None
    if isinstance(data, str):
        ref = "sha256:" + hashlib.sha256(data.encode()).hexdigest()
    else:
        ref = url if isinstance(url, str) else f"file:{file_id}" if file_id else None
    return fields, media_type, ref


class SharedMessages:
    """The prompt messages a run's calls have read, by the recorded message objects they share
    (an import's history is one object per message: interchange/minivela.py), so each is
    normalized once. A message is reused only after the very same earlier messages: then the
    tool names its results get from them are the same too."""

    def __init__(self) -> None:
        # (id of the entry before, id of the message) -> entry (message, its read messages, the
        # tool names it tells later ones); entries keep their message, so ids are not reused.
        self._entries: dict[tuple[int, int], tuple[object, list[dict], dict]] = {}

    def get(self, before: tuple | None, m: object) -> tuple | None:
        entry = self._entries.get((id(before), id(m)))
        return entry if entry is not None and entry[0] is m else None

    def put(self, before: tuple | None, m: object, read: list[dict], names: dict) -> tuple:
        entry = self._entries[(id(before), id(m))] = (m, read, names)
        return entry


class _Reader:
    """Reads one record; every error names the call and the field."""

    def __init__(self, record: dict, source: str, shared: SharedMessages | None = None):
        self.record, self.source, self.shared = record, source, shared
        self.body = "request"  # the record field the prompt is read from
        self.call_id = record.get("call_id") if isinstance(record, dict) else None

    def fail(self, field: str, problem: str):
        raise RecordError(problem, source=self.source, record_id=self.call_id, field=field)

    def expect(self, value, types, field: str):
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            self.fail(field, f"expected {names}, got {type(value).__name__}")
        return value

    @staticmethod
    def leftovers(item: dict, known, prefix: str, extra: dict) -> None:
        """Fields the unified message has no place for go to extra, under their path."""
        for key, value in item.items():
            if key not in known and key not in TRANSPORT_FIELDS and value not in (None, [], {}):
                extra[prefix + key] = value

    def block_part(self, block: dict, kind: str, prefix: str, extra: dict) -> dict:
        if kind in TEXT_TYPES:
            self.leftovers(block, {"type", "text", "refusal"}, prefix, extra)
            return part(kind, block.get("text") or block.get("refusal") or "")
        if kind in MEDIA_TYPES:
            fields, media_type, ref = media_reference(block, kind)
            self.leftovers(fields, (), prefix, extra)
            return part(kind, media_type=media_type, ref=ref)
        extra[prefix.rstrip(".")] = block  # a block we cannot read is kept whole
        return part(kind)

    def content(
        self, content, field: str, extra: dict, separator: str = "", path: str = "content", start: int = 0
    ) -> tuple[str | None, list[dict] | None]:
        """A str, null or list of blocks → (text, content_parts). The text keeps a marker for
        each non-text block; parts are None when the text says it all."""
        if content is None or isinstance(content, str):
            return content, None
        texts, parts = [], []
        for i, block in enumerate(self.expect(content, list, field), start):
            if isinstance(block, str):
                texts.append(block)
                parts.append(part("text", block))
                continue
            kind = self.expect(block, dict, f"{field}[{i}]").get("type")
            parts.append(self.block_part(block, kind, f"{path}[{i}].", extra))
            texts.append(parts[-1]["text"] if kind in TEXT_TYPES else MARKERS.get(kind, f"[{kind}]"))
        return separator.join(texts), None if _flat(parts) else parts

    def content_message(
        self, role: str, content, field: str, separator: str = "", path: str = "content", start: int = 0
    ) -> dict:
        """A message that is only its content (a system prompt, user text): text, parts, extra."""
        extra = {}
        text, parts = self.content(content, field, extra, separator, path, start)
        return message(role, text, content_parts=parts, extra=extra)

    def arguments(self, value) -> str:
        return value if isinstance(value, str) else _ENCODE(value)

    # -- Anthropic messages -----------------------------------------------------------
    def anthropic_assistant(self, content, field: str, names: dict) -> dict:
        if not isinstance(content, list):
            return message("assistant", self.expect(content, (str, type(None)), field))
        extra, text, thinking, blocks, calls, parts = {}, [], [], [], [], []
        for i, block in enumerate(content):
            kind = self.expect(block, dict, f"{field}[{i}]").get("type")
            prefix = f"content[{i}]."
            if kind == "thinking":
                thinking.append(block.get("thinking") or "")
                blocks.append(thinking_block(kind, block.get("thinking"), block.get("signature")))
                self.leftovers(block, {"type", "thinking", "signature"}, prefix, extra)
                parts.append(part(kind))
            elif kind == "redacted_thinking":
                thinking.append("[redacted_thinking]")
                blocks.append(thinking_block(kind, data=block.get("data")))
                self.leftovers(block, {"type", "data"}, prefix, extra)
                parts.append(part(kind))
            elif kind == "tool_use":
                names[block.get("id")] = block.get("name")
                calls.append(tool_call(block.get("id"), block.get("name"), self.arguments(block.get("input", {}))))
                self.leftovers(block, {"type", "id", "name", "input"}, prefix, extra)
                parts.append(part(kind, ref=block.get("id")))
            else:
                parts.append(self.block_part(block, kind, prefix, extra))
                text.append(parts[-1]["text"] if kind in TEXT_TYPES else MARKERS.get(kind, f"[{kind}]"))
        return message(
            "assistant",
            "".join(text),
            tool_calls=calls,
            reasoning_content=SECTION_SEPARATOR.join(thinking) if thinking else None,
            content_parts=None if _flat(parts) else parts,
            thinking_blocks=blocks,
            extra=extra,
        )

    def anthropic_user(self, content, field: str, names: dict) -> list[dict]:
        if not isinstance(content, list):
            return [message("user", self.expect(content, (str, type(None)), field))]
        out, pending = [], []  # pending: the text-side blocks since the last tool result

        def flush(end: int):
            if pending:
                out.append(self.content_message("user", pending, field, start=end - len(pending)))
                pending.clear()

        for i, block in enumerate(content):
            if self.expect(block, dict, f"{field}[{i}]").get("type") != "tool_result":
                pending.append(block)
                continue
            flush(i)
            extra, call_id = {}, block.get("tool_use_id")
            self.leftovers(block, {"type", "tool_use_id", "content", "is_error"}, "", extra)
            text, parts = self.content(block.get("content"), f"{field}[{i}].content", extra)
            out.append(
                message(
                    "tool",
                    text,
                    tool_call_id=call_id,
                    name=names.get(call_id),
                    is_error=bool(block.get("is_error", False)),
                    content_parts=parts,
                    extra=extra,
                )
            )
        flush(len(content))
        return out or [message("user", "")]

    def anthropic_prompt(self, request: dict) -> list[dict]:
        out, names = [], {}
        if request.get("system"):
            out.append(
                self.content_message("system", request["system"], f"{self.body}.system", SECTION_SEPARATOR, "system")
            )
        before = None  # the shared entry of the message before
        for i, m in enumerate(self.expect(request.get("messages", []), list, f"{self.body}.messages")):
            seen = self.shared.get(before, m) if self.shared is not None else None
            if seen is not None:
                before = seen
                _, read, told = seen
                names.update(told)
                out.extend(read)
                continue
            field = f"{self.body}.messages[{i}]"
            role = self.expect(m, dict, field).get("role")
            told = {}  # the tool names an assistant message gives the results after it
            if role == "assistant":
                read = [self.anthropic_assistant(m.get("content"), f"{field}.content", told)]
                names.update(told)
            elif role == "user":
                read = self.anthropic_user(m.get("content"), f"{field}.content", names)
            elif role == "system":  # Claude Code sends its environment block in place, as a message
                read = [self.content_message("system", m.get("content"), f"{field}.content", SECTION_SEPARATOR)]
            else:
                self.fail(f"{field}.role", f"unknown role {role!r} for anthropic_messages")
            level = {}
            self.leftovers(m, {"role", "content"}, "", level)
            if level:
                read[0]["extra"] = (read[0]["extra"] or {}) | level
            out.extend(read)
            if self.shared is not None:
                before = self.shared.put(before, m, read, told)
        return out

    def anthropic_responses(self, response: dict) -> list[dict]:
        content = self.expect(response.get("content"), list, "response.content")
        return [self.anthropic_assistant(content, "response.content", {})]

    def anthropic_tools(self, tools: list) -> list[dict]:
        return [
            function_tool(t.get("name") or t.get("type"), t.get("description"), t.get("input_schema")) for t in tools
        ]

    # -- OpenAI chat completions --------------------------------------------------------
    def chat_message(self, m: dict, field: str, names: dict) -> dict:
        role = self.expect(m, dict, field).get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            self.fail(f"{field}.role", f"unknown role {role!r} for openai_chat")
        extra = {"role": role} if role in ("developer", "function") else {}  # read as system / tool
        system = role in ("system", "developer")
        text, parts = self.content(m.get("content"), f"{field}.content", extra, SECTION_SEPARATOR if system else "")
        known = {"role", "content", "name"}
        if system or role == "user":
            self.leftovers(m, known, "", extra)
            return message("system" if system else "user", text, name=m.get("name"), content_parts=parts, extra=extra)
        if role in ("tool", "function"):
            call_id = m.get("tool_call_id")
            self.leftovers(m, known | {"tool_call_id"}, "", extra)
            return message(
                "tool",
                text,
                tool_call_id=call_id,
                name=m.get("name") or names.get(call_id),
                content_parts=parts,
                extra=extra,
            )
        calls = []
        for j, c in enumerate(m.get("tool_calls") or []):
            where = f"{field}.tool_calls[{j}]"
            function = self.expect(self.expect(c, dict, where).get("function"), dict, f"{where}.function")
            names[c.get("id")] = function.get("name")
            calls.append(tool_call(c.get("id"), function.get("name"), self.arguments(function.get("arguments", "{}"))))
            self.leftovers(
                c,
                {"id", "function"} | ({"type"} if c.get("type") in (None, "function") else set()),
                f"tool_calls[{j}].",
                extra,
            )
            self.leftovers(function, {"name", "arguments"}, f"tool_calls[{j}].function.", extra)
        reasoning_field = "reasoning_content" if m.get("reasoning_content") is not None else "reasoning"
        reasoning = m.get(reasoning_field)
        blocks = []
        for k, b in enumerate(m.get("thinking_blocks") or []):  # LiteLLM's form of Anthropic thinking
            b = self.expect(b, dict, f"{field}.thinking_blocks[{k}]")
            blocks.append(thinking_block(b.get("type"), b.get("thinking"), b.get("signature"), b.get("data")))
            self.leftovers(b, {"type", "thinking", "signature", "data"}, f"thinking_blocks[{k}].", extra)
        known |= {"tool_calls", "thinking_blocks"} | ({reasoning_field} if isinstance(reasoning, str) else set())
        self.leftovers(m, known, "", extra)
        return message(
            "assistant",
            text,
            tool_calls=calls,
            name=m.get("name"),
            reasoning_content=reasoning if isinstance(reasoning, str) else None,
            content_parts=parts,
            thinking_blocks=blocks,
            extra=extra,
        )

    def chat_prompt(self, request: dict) -> list[dict]:
        names = {}
        return [
            self.chat_message(m, f"{self.body}.messages[{i}]", names)
            for i, m in enumerate(self.expect(request.get("messages", []), list, f"{self.body}.messages"))
        ]

    def chat_responses(self, response: dict) -> list[dict]:
        choices = self.expect(response.get("choices"), list, "response.choices")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        return [
            self.chat_message(
                {**self.expect(c, dict, f"response.choices[{i}]").get("message", {}), "role": "assistant"},
                f"response.choices[{i}].message",
                {},
            )
            for i, c in enumerate(choices)
        ]

    def chat_tools(self, tools: list) -> list[dict]:
        out = []
        for t in tools:
            function = t.get("function") or t
            out.append(
                function_tool(
                    function.get("name") or t.get("type"), function.get("description"), function.get("parameters")
                )
            )
        return out

    # -- OpenAI responses ---------------------------------------------------------------
    def response_items(self, items: list, field: str) -> list[dict]:
        """Input or output items; consecutive assistant-side items make one assistant message
        (their fields in extra under items[k], k counted within the message)."""
        out, names, turn, k = [], {}, None, 0
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            kind = self.expect(item, dict, where).get("type") or "message"
            role = item.get("role")
            if kind == "message" and role != "assistant":
                turn, extra = None, {"role": role} if role == "developer" else {}
                system = role in ("system", "developer")
                text, parts = self.content(
                    item.get("content"), f"{where}.content", extra, SECTION_SEPARATOR if system else ""
                )
                if not system and role != "user":
                    self.fail(f"{where}.role", f"unknown role {role!r} for openai_responses")
                self.leftovers(item, {"type", "role", "content"}, "", extra)
                out.append(message("system" if system else "user", text, content_parts=parts, extra=extra))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                turn, extra = None, {}
                call_id = item.get("call_id")
                text, parts = self.content(item.get("output"), f"{where}.output", extra, path="output")
                self.leftovers(item, {"type", "call_id", "output"}, "", extra)
                out.append(
                    message(
                        "tool", text, tool_call_id=call_id, name=names.get(call_id), content_parts=parts, extra=extra
                    )
                )
            else:
                if turn is None:
                    turn, k = message("assistant", extra={}), 0
                    turn["extra"] = {}  # filled by the items that follow
                    out.append(turn)
                prefix, k = f"items[{k}].", k + 1
                if kind == "message":
                    text, parts = self.content(
                        item.get("content"), f"{where}.content", turn["extra"], path=prefix + "content"
                    )
                    turn["content"] += text or ""
                    turn["content_parts"] = (turn["content_parts"] or []) + parts if parts else turn["content_parts"]
                    self.leftovers(item, {"type", "role", "content"}, prefix, turn["extra"])
                elif kind == "reasoning":
                    parts = item.get("content") or item.get("summary") or []
                    sections = [turn["reasoning_content"]] if turn["reasoning_content"] is not None else []
                    sections.append(self.text(parts, f"{where}.summary"))
                    turn["reasoning_content"] = SECTION_SEPARATOR.join(sections)
                    used = "content" if item.get("content") else "summary"
                    self.leftovers(item, {"type", used}, prefix, turn["extra"])
                elif kind in ("function_call", "custom_tool_call"):
                    names[item.get("call_id")] = item.get("name")
                    arguments = item.get("arguments") if kind == "function_call" else item.get("input")
                    turn["tool_calls"] = (turn["tool_calls"] or []) + [
                        tool_call(item.get("call_id"), item.get("name"), self.arguments(arguments or ""))
                    ]
                    self.leftovers(
                        item,
                        {"call_id", "name", "arguments" if kind == "function_call" else "input"}
                        | ({"type"} if kind == "function_call" else set()),
                        prefix,
                        turn["extra"],
                    )
                else:
                    turn["content"] += MARKERS.get(kind, f"[{kind}]")
                    turn["extra"][prefix.rstrip(".")] = item
        return out

    def text(self, parts, field: str) -> str:
        """Reasoning summary or content parts as sections of text."""
        text, _ = self.content(parts, field, {}, SECTION_SEPARATOR)
        return text or ""

    def responses_prompt(self, request: dict) -> list[dict]:
        out = []
        # A call chained by previous_response_id repeats the instructions, not the history.
        if request.get("instructions") and not request.get("previous_response_id"):
            out.append(
                self.content_message(
                    "system", request["instructions"], f"{self.body}.instructions", SECTION_SEPARATOR, "instructions"
                )
            )
        items = request.get("input", [])
        if isinstance(items, str):
            return out + [message("user", items)]
        return out + self.response_items(self.expect(items, list, f"{self.body}.input"), f"{self.body}.input")

    def responses_responses(self, response: dict) -> list[dict]:
        output = self.expect(response.get("output"), list, "response.output")
        messages = self.response_items(output, "response.output")
        return [m for m in messages if m["role"] == "assistant"] or [message("assistant")]


def function_tool(name, description, parameters) -> dict:
    return {
        "type": "function",
        "function": {"name": name or "", "description": description or "", "parameters": parameters or {}},
    }


_FORMATS = {
    "anthropic_messages": (_Reader.anthropic_prompt, _Reader.anthropic_responses, _Reader.anthropic_tools),
    "openai_chat": (_Reader.chat_prompt, _Reader.chat_responses, _Reader.chat_tools),
    "openai_responses": (_Reader.responses_prompt, _Reader.responses_responses, _Reader.chat_tools),
}


def upstream_format(record: dict) -> str | None:
    """The wire format of the record's upstream_request, from the route's provider
    (litellm_model "<provider>/<model>"); None when it cannot be told."""
    body = record.get("upstream_request")
    provider, slash, _ = (record.get("litellm_model") or "").partition("/")
    if not isinstance(body, dict) or not slash:
        return None
    if provider in ANTHROPIC_PROVIDERS and isinstance(body.get("messages"), list):
        return "anthropic_messages"
    if provider in OPENAI_COMPATIBLE_PROVIDERS:
        # litellm passes a Responses API call through to OpenAI as one; anything else is chat.
        if isinstance(body.get("messages"), list):
            return "openai_chat"
        if "input" in body:
            return "openai_responses"
    return None


def read_call(record: dict, source: str = "calls", shared: SharedMessages | None = None) -> Call:
    """Normalize one call record; raises RecordError naming the call and the field. The prompt
    and tools come from what the model saw: upstream_request when the proxy translated the
    call, read in the upstream's format; the response is read as the client got it. With
    `shared`, the messages of one run's calls: the Call's prompt messages may be those of an
    earlier call, the same dicts (read them, do not change them)."""
    reader = _Reader(record, source, shared)
    reader.expect(record, dict, "record")
    call_id = reader.expect(record.get("call_id"), str, "call_id")
    wire_format = record.get("wire_format")
    if wire_format not in _FORMATS:
        reader.fail("wire_format", f"expected one of {list(WIRE_FORMATS)}, got {wire_format!r}")
    if record.get("seq") is not None:
        reader.expect(record["seq"], int, "seq")
    request = reader.expect(record.get("request"), dict, "request")
    upstream = record.get("upstream_request")
    if upstream is not None:
        reader.expect(upstream, dict, "upstream_request")
    prompt_format = upstream_format(record)
    body = request
    if prompt_format is not None:
        body, reader.body = upstream, "upstream_request"
    # An upstream body of a format we cannot tell is not guessed at: the request is read, and
    # the call says so (upstream_unread).
    read_prompt, _, read_tools = _FORMATS[prompt_format or wire_format]
    _, read_responses, _ = _FORMATS[wire_format]  # the response as the client received it
    status = record.get("status") or ("error" if record.get("error") else "ok")
    response = record.get("response")
    responses = []
    if status == "ok" and response is not None:
        responses = read_responses(reader, reader.expect(response, dict, "response"))
    tools = reader.expect(body.get("tools") or [], list, f"{reader.body}.tools")
    for i, t in enumerate(tools):
        reader.expect(t, dict, f"{reader.body}.tools[{i}]")
    prompt = read_prompt(reader, body)
    for m in prompt + responses:
        if isinstance(m["extra"], dict):  # a shared message was encoded by the call that read it
            m["extra"] = _ENCODE(m["extra"]) if m["extra"] else None
    return Call(
        call_id=call_id,
        seq=record.get("seq"),
        started_at=record.get("started_at"),
        ended_at=record.get("ended_at"),
        wire_format=wire_format,
        call_kind=record.get("call_kind") or "agent",
        status=status,
        error=record.get("error"),
        prompt=prompt,
        responses=responses,
        tools=read_tools(reader, tools),
        record=record,
        prompt_from=reader.body,
        upstream_unread=upstream is not None and prompt_format is None,
        previous_response_id=body.get("previous_response_id"),  # a translated body sends all its history
        response_id=response.get("id") if isinstance(response, dict) else None,
    )
