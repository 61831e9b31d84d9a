"""mini-vela raw trajectories → trajhub call records.

mini-vela (MiniMax-AI/mini-vela) records one JSON line per API call through its LiteLLM
logger: {session_id, biz_id, request_time (ms), request_body {messages, system, tools,
model, max_tokens, metadata} in the Anthropic messages format, response_body {content}}.
Both the sync and the async success hooks fire, so every call is there twice; the two
lines differ only in request_time. Failed calls are not recorded.

Each distinct call becomes one record in trajhub's call format (see
trajhub_assets.merge.merge), with a call_id derived from its content, so the two copies
collapse into one, and a `provenance` field that keeps where it came from: file, lines,
session_id, biz_id and every request_time.

Every call repeats the whole conversation, so a file is mostly text already seen on the line
before. `read_minivela` parses a line's new parts only: a message, tool, system block or
content block whose JSON text is the one at the same place of a recent line is that line's
object (`_SharedLines`), so the parse, the call ids (`_CallDigests`), the secret scan and
the blob table see each repeated part once. The records are equal to parsing every line
with json.loads; a line the shortcut cannot read is parsed with json.loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable

from trajhub_assets.errors import RecordError
from trajhub_assets.shared_history import repeated_prefix

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json's own
_SPACE = " \t\n\r"
_DIGITS = frozenset("0123456789")
_NUMBER_GOES_ON = frozenset("0123456789.eE+-")
_DECODER = json.JSONDecoder()
_scanstring = json.decoder.scanstring


class _Node:
    """A parsed value and where it came from: its JSON text (a leaf) or its children (an object
    or array read part by part; an array also keeps its text up to its last item, `head`)."""

    __slots__ = ("text", "value", "children", "head")

    def __init__(self, text: str | None, value, children=None, head: str | None = None):
        self.text, self.value, self.children, self.head = text, value, children, head


def _here(leaf: str | None, text: str, pos: int) -> bool:
    """Whether the value at text[pos] is the one this leaf's JSON text was (a number must end
    where the leaf's does: "0" is not the start of 0.5)."""
    return (
        leaf is not None
        and text.startswith(leaf, pos)
        and (leaf[-1] not in _DIGITS or text[pos + len(leaf) : pos + len(leaf) + 1] not in _NUMBER_GOES_ON)
    )


class _SharedLines:
    """json.loads of line after line, where a part whose JSON text is the text at the same
    place (same keys, same index) of one of the last few lines is that line's object.

    Objects and arrays down to `depth` levels are read part by part (the line, request_body and
    response_body, their messages, system, tools and content); deeper values are a leaf: parsed
    by json's decoder or, same text, taken from the earlier line. An object or array whose parts
    all came from one earlier one, in the same order, is that earlier object. Anything the
    reader does not expect falls back to json.loads of the whole line: same value, same error."""

    def __init__(self, depth: int = 3, keep: int = 4):
        self.depth, self.keep = depth, keep
        self.recent: list[_Node] = []

    def loads(self, text: str):
        try:
            start = _WHITESPACE.match(text).end()
            if not text.startswith("{", start):
                return json.loads(text)
            value, node, end = self._container(text, start, self.recent, 0)
            if _WHITESPACE.match(text, end).end() != len(text):
                raise ValueError("extra data")
        except (ValueError, IndexError):
            return json.loads(text)  # the error json gives, or (never expected) its value
        self.recent = [node, *self.recent[: self.keep - 1]]
        return value

    def _value(self, text: str, pos: int, candidates: list[_Node], level: int, tried: bool = False):
        if not tried:
            for candidate in candidates:
                if _here(candidate.text, text, pos):
                    return candidate.value, candidate, pos + len(candidate.text)
        if level < self.depth and text[pos] in "{[":
            return self._container(text, pos, candidates, level)
        value, end = _DECODER.raw_decode(text, pos)
        return value, _Node(text[pos:end], value), end

    def _container(self, text: str, pos: int, candidates: list[_Node], level: int):
        """The object or array at text[pos]: (value, node, end)."""
        is_object = text[pos] == "{"
        close = "}" if is_object else "]"
        shapes = [c for c in candidates if isinstance(c.children, dict if is_object else list)]
        start, keys, nodes, values = pos, [], [], []
        # An array that begins as an earlier one did, item for item (a history one call longer):
        # all those items at once, then read on after the last of them.
        jumped = next((c for c in shapes if _here(c.head, text, pos)), None)
        if jumped is not None:
            nodes, values = list(jumped.children), list(jumped.value)
            pos += len(jumped.head)
        else:
            pos += 1
            if text[pos] in _SPACE:
                pos = _WHITESPACE.match(text, pos).end()
        last = None
        if jumped is None and text[pos] == close:
            pos += 1
        else:
            while True:
                if jumped is not None:  # after the items taken: the separator, or the end
                    jumped = None
                elif is_object:
                    if text[pos] != '"':
                        raise ValueError("expected a key")
                    key, pos = _scanstring(text, pos + 1)
                    if text[pos] != ":":
                        pos = _WHITESPACE.match(text, pos).end()
                        if text[pos] != ":":
                            raise ValueError("expected ':'")
                    pos += 1
                    if text[pos] in _SPACE:
                        pos = _WHITESPACE.match(text, pos).end()
                    keys.append(key)
                    value, node, pos = self._value(
                        text, pos, [c.children[key] for c in shapes if key in c.children], level + 1
                    )
                    values.append(value)
                    nodes.append(node)
                else:  # the hot loop: a message, tool or block, most often the one of the line before
                    index, node = len(nodes), None
                    for c in shapes:
                        if index < len(c.children):
                            candidate = c.children[index]
                            if _here(candidate.text, text, pos):
                                node = candidate
                                break
                    if node is not None:
                        value = node.value
                        pos += len(node.text)
                    else:
                        value, node, pos = self._value(
                            text,
                            pos,
                            [c.children[index] for c in shapes if index < len(c.children)],
                            level + 1,
                            tried=True,
                        )
                    values.append(value)
                    nodes.append(node)
                last = pos  # the end of the last item
                char = text[pos]
                if char in _SPACE:
                    pos = _WHITESPACE.match(text, pos).end()
                    char = text[pos]
                if char == close:
                    pos += 1
                    break
                if char != ",":
                    raise ValueError("expected ',' or the end")
                pos += 1
                if text[pos] in _SPACE:
                    pos = _WHITESPACE.match(text, pos).end()
        for c in shapes:  # the very object of an earlier line, when it is all that line's parts
            same = c.children.values() if is_object else c.children
            if len(same) == len(nodes) and all(a is b for a, b in zip(same, nodes, strict=True)):
                if not is_object or list(c.children) == keys:
                    return c.value, c, pos
        if is_object:
            value, children = {}, {}
            for key, item, node in zip(keys, values, nodes, strict=True):
                value[key] = item  # a repeated key: the last value, at the first place, as json does
                children[key] = node
            return value, _Node(None, value, children), pos
        return values, _Node(None, values, nodes, text[start:last] if last is not None else None), pos


class _CallDigests:
    """The call id's digest, sha256 of json.dumps([request, response], sort_keys=True,
    ensure_ascii=False), written part by part: the sorted JSON of each message, tool, system
    block and content block is made once per object, and lines share their repeated parts.

    A call's JSON begins as the call before's did, up to its history but that call's last
    message (a client moves its cache breakpoint off it): the hash goes on from there."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[object, bytes]] = {}
        self._last: tuple[object, object, str] | None = None  # the copy of a call is the same objects
        self._history: int | None = None  # where this call's last message begins in its chunks
        self._resume: tuple[list[bytes], object] | None = None  # chunks, and the sha256 of them
        self._before: tuple[list, list[bytes]] = ([], [])  # the last history, and its chunks

    def digest(self, request, response) -> str:
        last = self._last
        if last is not None and last[0] is request and last[1] is response:
            return last[2]
        chunks, self._history = [b"["], None
        self._chunks(request, 2, chunks)
        chunks.append(b", ")
        self._chunks(response, 2, chunks)
        chunks.append(b"]")
        sha, done = hashlib.sha256(), 0
        resume = self._resume
        if resume is not None and chunks[: len(resume[0])] == resume[0]:
            sha, done = resume[1].copy(), len(resume[0])
        if self._history is not None and self._history > done:
            sha.update(b"".join(chunks[done : self._history]))
            done = self._history
            self._resume = (chunks[:done], sha.copy())
        sha.update(b"".join(chunks[done:]))
        digest = sha.hexdigest()
        self._last = (request, response, digest)
        return digest

    def _history_chunks(self, messages: list, out: list[bytes]) -> None:
        """The request's messages as _chunks writes a list at depth 1 (a chunk per message, ", "
        between), the first ones those of the call before when they are its very messages: all
        of them, or all but its last. Notes where the last message begins (`_history`)."""
        before, made = self._before
        same = repeated_prefix(messages, before)
        start = len(out)
        out.append(b"[")
        out.extend(made[: 2 * same - 1] if same else ())
        parts = self._parts
        for i in range(same, len(messages)):
            if i:
                out.append(b", ")
            item = messages[i]
            found = parts.get(id(item))
            if found is not None and found[0] is item:
                out.append(found[1])
            else:
                self._chunks(item, 0, out)
        self._before = (list(messages), out[start + 1 :])
        out.append(b"]")
        self._history = len(out) - (3 if len(messages) > 1 else 2)  # the last one, its ", ", "]"

    def _chunks(self, value, depth: int, out: list[bytes]) -> None:
        """json.dumps(value, sort_keys=True, ensure_ascii=False), encoded, onto `out`: `depth`
        levels of objects and arrays put together here, the values below them made once per object."""
        if depth and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            out.append(b"{")
            for i, (key, item) in enumerate(sorted(value.items())):
                out.append((b", " if i else b"") + _encode(json.dumps(key, ensure_ascii=False)) + b": ")
                if key == "messages" and depth == 2 and isinstance(item, list) and item:
                    self._history_chunks(item, out)
                else:
                    self._chunks(item, depth - 1, out)
            out.append(b"}")
        elif depth and isinstance(value, list):
            out.append(b"[")
            parts = self._parts
            for i, item in enumerate(value):
                if i:
                    out.append(b", ")
                found = parts.get(id(item))
                if found is not None and found[0] is item:
                    out.append(found[1])
                else:
                    self._chunks(item, depth - 1, out)
            out.append(b"]")
        else:
            text = _encode(json.dumps(value, sort_keys=True, ensure_ascii=False))
            if isinstance(value, (dict, list)):
                self._parts[id(value)] = (value, text)
            out.append(text)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _body(line: dict, name: str, source: str, number: int) -> dict:
    body = line.get(name)
    if isinstance(body, str):  # mini-vela's reader accepts bodies stored as JSON strings
        try:
            body = json.loads(body)
        except ValueError as error:
            raise RecordError(f"not JSON: {error}", source=source, line=number, field=name) from error
    if not isinstance(body, dict):
        raise RecordError(f"expected an object, got {type(body).__name__}", source=source, line=number, field=name)
    return body


def minivela_to_calls(
    lines: Iterable[dict | None], *, source: str = "mini-vela", run_id: str | None = None
) -> list[dict]:
    """Call records from parsed mini-vela lines, numbered from 1 in errors and provenance
    (None stands for a blank line: skipped, but counted)."""
    calls: dict[str, dict] = {}
    digests = _CallDigests()
    for number, line in enumerate(lines, start=1):
        if line is None:
            continue
        if not isinstance(line, dict):
            raise RecordError(f"expected an object, got {type(line).__name__}", source=source, line=number)
        request = _body(line, "request_body", source, number)
        response = _body(line, "response_body", source, number)
        if not isinstance(response.get("content", []), list):
            raise RecordError(
                "expected a list of content blocks", source=source, line=number, field="response_body.content"
            )
        request_time = line.get("request_time")
        if not isinstance(request_time, (int, float)):
            raise RecordError(
                f"expected milliseconds since the epoch, got {request_time!r}",
                source=source,
                line=number,
                field="request_time",
            )
        call_id = f"mv-{digests.digest(request, response)[:20]}"
        seen = calls.get(call_id)
        if seen is not None:
            seen["provenance"]["lines"].append(number)
            seen["provenance"]["request_times"].append(request_time)
            continue
        # mini-vela stamps a line when the call has finished, so both times are that moment.
        at = request_time / 1000
        calls[call_id] = {
            "run_id": run_id or line.get("session_id") or "",
            "call_id": call_id,
            "seq": None,
            "started_at": at,
            "ended_at": at,
            "wire_format": "anthropic_messages",
            "call_kind": "agent",
            "request": request,
            "response": {"content": response.get("content", []), "stop_reason": None},
            "status": "ok",
            "error": None,
            "model": request.get("model"),
            "source": "mini-vela",
            "provenance": {
                "format": "mini-vela",
                "file": source,
                "lines": [number],
                "request_times": [request_time],
                "session_id": line.get("session_id"),
                "biz_id": line.get("biz_id"),
            },
        }
    ordered = sorted(calls.values(), key=lambda c: (c["started_at"], c["provenance"]["lines"][0]))
    for seq, call in enumerate(ordered):
        call["seq"] = seq
    return ordered


def read_minivela(path: str | os.PathLike, *, run_id: str | None = None) -> list[dict]:
    """Call records from a mini-vela raw .jsonl file. What the calls repeat (history, system,
    tools) is one object shared by the records: read them, do not change their parts in place."""
    lines = []
    reader = _SharedLines()
    with open(path, encoding="utf-8", errors="surrogatepass") as f:
        for number, text in enumerate(f, start=1):
            if text.isspace():  # a line read from a file is never empty; no stripped copy of a long line
                lines.append(None)
                continue
            try:
                lines.append(reader.loads(text))
            except ValueError as error:
                raise RecordError(f"not JSON: {error}", source=str(path), line=number) from error
    return minivela_to_calls(lines, source=str(path), run_id=run_id)
