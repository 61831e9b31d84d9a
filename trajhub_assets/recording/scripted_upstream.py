"""A scripted upstream LLM server: real HTTP, no model, for tests and demos.

It speaks Anthropic messages (`/v1/messages`, `/v1/messages/count_tokens`) and OpenAI
chat (`/v1/chat/completions`), streaming and not. A script is a list of `Reply`/`Fail`
served in order, or a policy `callable(ScriptedRequest) -> Reply | Fail` (for
concurrent clients, where order is not fixed). A reply is written once, as ordered
Anthropic-style content blocks, and rendered in the wire format the caller asked for,
so a test can compare what the proxy recorded with what this server sent
(`served[i].body`, the non-stream body equivalent of what went on the wire). A reply may
instead carry a whole response body (`Reply(body=...)`, a live model's answer passed on):
it is sent as is, or streamed from.

Failures on demand: `Fail(429 | 500 | ...)`, with headers such as `retry-after`; a long
`delay` (on a Fail or a Reply) is a timeout for the caller; `Reply(break_after=n)` drops a
stream after n events (uvicorn logs that as an ASGI error, on purpose). `calls` counts what
was served, failures included.

The server runs uvicorn in a background thread on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Reply:
    """One assistant turn as ordered content blocks:
    {"type": "thinking", "thinking", "signature"}, {"type": "redacted_thinking", "data"},
    {"type": "text", "text"}, {"type": "tool_use", "id", "name", "input"}. On the OpenAI wire a
    tool_use `input` given as a string is sent verbatim as the call's `arguments` (a replay
    serves a model's exact argument text, spacing and all), and a tool_use `index` as the call's."""

    blocks: list[dict]
    stop_reason: str | None = None  # default: "tool_use" if a tool is called, else "end_turn"
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    delay: float = 0.0  # seconds before the first byte
    chunk_delay: float = 0.0  # seconds between stream events
    break_after: int | None = None  # streams: drop the connection after this many events
    headers: dict[str, str] | None = None  # non-stream replies: e.g. a price in x-litellm-response-cost
    # A response body in the wire format asked for, served in place of `blocks`: nothing of
    # another model's answer (ids, block types, usage fields) is lost on the way.
    body: dict | None = None


@dataclass
class Fail:
    """An HTTP error (429, 500, ...) after `delay` seconds; a long delay is a timeout."""

    status: int = 500
    message: str = "scripted failure"
    delay: float = 0.0
    headers: dict[str, str] | None = None  # e.g. {"retry-after": "2"} on a 429


@dataclass
class ScriptedRequest:
    index: int  # 0-based, in the order requests arrived
    path: str
    wire_format: str  # "anthropic_messages" | "openai_chat" | "count_tokens"
    body: dict
    headers: dict[str, str]


@dataclass
class Served:
    request: ScriptedRequest
    status: int
    stream: bool
    body: dict  # the non-stream body equivalent of what was sent


Policy = Callable[[ScriptedRequest], Reply | Fail]


def text_block(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use_block(block_id: str, name: str, arguments: dict) -> dict:
    return {"type": "tool_use", "id": block_id, "name": name, "input": arguments}


def thinking_block(value: str, signature: str) -> dict:
    return {"type": "thinking", "thinking": value, "signature": signature}


def say(value: str, **kwargs) -> Reply:
    """A reply with one text block."""
    return Reply([text_block(value)], **kwargs)


def reply_from_openai(message: dict, **kwargs) -> Reply:
    """A Reply from an OpenAI chat assistant message (the shape baseline policies speak)."""
    blocks = [text_block(message["content"])] if message.get("content") else []
    blocks += [
        tool_use_block(call["id"], call["function"]["name"], json.loads(call["function"]["arguments"]))
        for call in message.get("tool_calls") or []
    ]
    return Reply(blocks, **kwargs)


class ScriptedUpstream:
    def __init__(self, script: Sequence[Reply | Fail] | Policy = (), port: int = 0):
        self._script = script if callable(script) else list(script)
        self._lock = threading.Lock()
        self._next = 0
        self.served: list[Served] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port  # 0: any free port

    # -- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="scripted-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_script(self, script: Sequence[Reply | Fail] | Policy) -> None:
        """Replace the script and forget what was served (a shared server, one test at a time)."""
        with self._lock:
            self._script = script if callable(script) else list(script)
            self._next = 0
            self.served = []

    @property
    def calls(self) -> int:
        return len(self.served)

    # -- serving -------------------------------------------------------------------
    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _take(self, request: Request, wire_format: str) -> tuple[ScriptedRequest, Reply | Fail]:
        body = await request.json()
        with self._lock:
            scripted = ScriptedRequest(self._next, request.url.path, wire_format, body, dict(request.headers))
            self._next += 1
            if callable(self._script):
                step = None
            elif scripted.index < len(self._script):
                step = self._script[scripted.index]
            else:
                step = Fail(500, f"scripted upstream: script exhausted at call {scripted.index}")
        if step is None:  # a policy runs outside the lock; it may be slow
            step = self._script(scripted)
        return scripted, step

    def _serve(self, scripted: ScriptedRequest, status: int, stream: bool, body: dict) -> None:
        with self._lock:
            self.served.append(Served(scripted, status, stream, body))

    async def _fail(self, scripted: ScriptedRequest, fail: Fail, wire_format: str) -> Response:
        await asyncio.sleep(fail.delay)
        if wire_format == "anthropic_messages":
            body = {"type": "error", "error": {"type": _anthropic_error_type(fail.status), "message": fail.message}}
        else:
            body = {"error": {"message": fail.message, "type": "scripted_error", "code": str(fail.status)}}
        self._serve(scripted, fail.status, False, body)
        return JSONResponse(body, status_code=fail.status, headers=fail.headers)

    async def _count_tokens(self, request: Request) -> Response:
        scripted, step = await self._take(request, "count_tokens")
        if isinstance(step, Fail):
            return await self._fail(scripted, step, "anthropic_messages")
        body = step.body or {"input_tokens": step.input_tokens}
        self._serve(scripted, 200, False, body)
        return JSONResponse(body)

    async def _messages(self, request: Request) -> Response:
        scripted, step = await self._take(request, "anthropic_messages")
        if isinstance(step, Fail):
            return await self._fail(scripted, step, "anthropic_messages")
        message = step.body or anthropic_message(step, scripted.body.get("model", ""), f"msg_scripted_{scripted.index}")
        stream = bool(scripted.body.get("stream"))
        self._serve(scripted, 200, stream, message)
        await asyncio.sleep(step.delay)
        if not stream:
            return JSONResponse(message, headers=step.headers)
        return self._sse(step, anthropic_events(message))

    async def _chat(self, request: Request) -> Response:
        scripted, step = await self._take(request, "openai_chat")
        if isinstance(step, Fail):
            return await self._fail(scripted, step, "openai_chat")
        completion = step.body or openai_completion(
            step, scripted.body.get("model", ""), f"chatcmpl-scripted-{scripted.index}"
        )
        stream = bool(scripted.body.get("stream"))
        self._serve(scripted, 200, stream, completion)
        await asyncio.sleep(step.delay)
        if not stream:
            return JSONResponse(completion, headers=step.headers)
        return self._sse(step, openai_chunks(completion))

    def _sse(self, step: Reply, frames: list[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for sent, frame in enumerate(frames):
                if step.break_after is not None and sent >= step.break_after:
                    # An exception mid-body makes uvicorn drop the connection, as a dying upstream would.
                    raise ConnectionAbortedError("scripted upstream: stream broken on purpose")
                if step.chunk_delay:
                    await asyncio.sleep(step.chunk_delay)
                yield frame

        return StreamingResponse(body(), media_type="text/event-stream")


# -- rendering ---------------------------------------------------------------------
def _stop_reason(reply: Reply) -> str:
    if reply.stop_reason:
        return reply.stop_reason
    return "tool_use" if any(b["type"] == "tool_use" for b in reply.blocks) else "end_turn"


def _anthropic_error_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")


def anthropic_message(reply: Reply, model: str, message_id: str) -> dict:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [dict(b) for b in reply.blocks],
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_read_input_tokens": reply.cache_read_tokens,
            "cache_creation_input_tokens": reply.cache_creation_tokens,
        },
    }


def _pieces(value: str, size: int = 7) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def anthropic_events(message: dict) -> list[str]:
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    frames = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        opening = {
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
            "text": {"type": "text", "text": ""},
            "tool_use": {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}},
        }.get(kind, block)
        frames.append(
            _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
        )
        deltas: list[dict] = []
        if kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        elif kind == "tool_use":
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(json.dumps(block["input"]))]
        for delta in deltas:
            frames.append(
                _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    frames.append(_event("message_stop", {"type": "message_stop"}))
    return frames


def openai_completion(reply: Reply, model: str, completion_id: str) -> dict:
    texts = [b["text"] for b in reply.blocks if b["type"] == "text"]
    thoughts = [b["thinking"] for b in reply.blocks if b["type"] == "thinking"]
    calls = [
        ({"index": b["index"]} if "index" in b else {})
        | {
            "id": b["id"],
            "type": "function",
            "function": {
                "name": b["name"],
                "arguments": b["input"] if isinstance(b["input"], str) else json.dumps(b["input"]),
            },
        }
        for b in reply.blocks
        if b["type"] == "tool_use"
    ]
    message: dict = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    prompt = reply.input_tokens + reply.cache_read_tokens
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": reply.output_tokens,
            "total_tokens": prompt + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens},
        },
    }


def openai_chunks(completion: dict) -> list[str]:
    choice = completion["choices"][0]
    message = choice["message"]
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        data = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n"

    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"reasoning_content": p}) for p in _pieces(message.get("reasoning_content") or "") if p]
    frames += [chunk({"content": p}) for p in _pieces(message.get("content") or "") if p]
    for index, call in enumerate(message.get("tool_calls") or []):
        frames.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        frames += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
            for p in _pieces(call["function"]["arguments"])
        ]
    frames.append(chunk({}, choice["finish_reason"]))
    frames.append(f"data: {json.dumps(head | {'choices': [], 'usage': completion['usage']})}\n\n")
    frames.append("data: [DONE]\n\n")
    return frames
