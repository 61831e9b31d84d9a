"""trajhub's trajectory recorder: a LiteLLM CustomLogger that writes one JSON line per call.

The proxy loads it from litellm_config.yaml (`callbacks: trajectory_logger.instance`). It
is self-contained (litellm and the standard library), so the proxy needs no trajhub or Dagster.

Hooks: proxy-level ones, which see what the client sent and what it got back.
- async_pre_call_hook opens a call: run id, start time, the client's request.
- async_post_call_success_hook closes a non-stream call with the response.
- async_post_call_streaming_iterator_hook wraps a stream: it notes the first token, feeds
  each chunk to an assembler that rebuilds the non-stream body (content blocks in their
  original order), and closes the call when the stream ends or breaks.
- async_post_call_failure_hook closes a call with its error.
A call is closed once: closing pops it from the open calls, so a hook that fires twice for
one call (or a failure hook after a broken stream already closed it) writes nothing.

start_proxy.py adds an ASGI middleware that passes each HTTP exchange to `handle_http`:
it keeps the exact request body (litellm mutates its own copy) and records what no hook
sees: calls forwarded as is (forwarding.py; their streams assembled here), count_tokens
calls, requests refused before the hooks ran (bad key, unknown model), and requests whose
handler raised or whose client left. It refuses, itself and with a clear 4xx, a request
with no key or a body that is not a JSON object (litellm answers some with a bare 500);
such a body is recorded as text, or base64, capped at RAW_BODY_CAP.

`request` is what the client sent; `upstream_request` is what litellm sent upstream when it
translated the call (null when the upstream got `request` as is, model aside).

Order without a shared counter: the proxy may run as several worker processes and as several
replicas, all appending to the same run files. No process can number a run's calls, so a
record carries `seq: null` and its start time twice: `started_at` (wall clock) and `started_ns`
(CLOCK_MONOTONIC, one clock for every process on the host named by `clock`, its boot id).
raw_calls.read_run numbers the calls 0..n-1 in start order when it reads the file; a client's
sequential calls start one after the other, whichever process served each.

Durability: one writer thread serializes every record and writes it with one os.write on
an O_APPEND file, so lines never interleave and the event loop never does file I/O. That
holds across processes too: Linux appends each write(2) to a local file whole, under the
file's lock (not so on NFS: keep the recordings on a local disk or one volume per host). The
middleware holds back the last bytes of a response until its call's line is written, so a
client that saw a call complete finds its record even if the proxy is killed the next
instant (the line is in the kernel's page cache; TRAJHUB_RECORDER_FSYNC=1 also survives a
power cut). Without the middleware, the closing hook waits for the write instead.

Credentials: headers are kept only from an allowlist; body keys that name credentials are
replaced, and so is every known secret value (the master key, upstream keys from the
environment) and anything shaped like an API key, wherever it appears in the line.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

try:  # orjson is several times faster; litellm[proxy] ships it
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)

    _loads = orjson.loads
except ImportError:  # pragma: no cover

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, default=_jsonable, ensure_ascii=False).encode()

    _loads = json.loads

log = logging.getLogger("trajhub.recorder")

RECORD_VERSION = 1
RUN_HEADER = "x-trajhub-run"
CALL_KIND_HEADER = "x-trajhub-call-kind"
RUN_TAG_PREFIX = "trajhub_run="
UNATTRIBUTED = "_unattributed"  # file for calls that carried no (valid) run id
REDACTED = "[REDACTED]"
# A run id becomes a file name: model key, instance id, attempt and nonce joined by "~".
# No leading dot: never ".", ".." or a hidden file.
_RUN_ID = re.compile(r"^(?!\.)[A-Za-z0-9._:@+~-]{1,200}$")
_KEPT_HEADERS = (
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    RUN_HEADER,
    CALL_KIND_HEADER,
    "x-litellm-tags",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-app",
)
# Where litellm looks for the client's key; a request with none is refused here, clearly.
_KEY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key", "x-litellm-api-key")
_CREDENTIAL_KEY = re.compile(
    r"^(api[_-]?key|x-api-key|authorization|proxy-authorization|access[_-]?token|"
    r"refresh[_-]?token|id[_-]?token|session[_-]?token|client[_-]?secret|password|"
    r"aws_secret_access_key|aws_session_token|vertex_credentials|.*_secret|secret)$",
    re.IGNORECASE,
)
# Key-shaped strings: OpenAI/Anthropic/LiteLLM "sk-...", Google "AIza...", bearer tokens.
_KEY_SHAPED = re.compile(
    rb"(?<![A-Za-z0-9_-])(sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|Bearer [A-Za-z0-9._~+/=-]{16,})"
)
_KEY_PREFIXES = (b"sk-", b"AIza", b"Bearer ")
# Every key _CREDENTIAL_KEY matches ends in one of these (as a JSON key: followed by a quote).
_CREDENTIAL_HINTS = (b'key"', b'authorization"', b'token"', b'secret"', b'password"', b'credentials"')
_SECRET_ENV = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD)$")

_RECORDED_PATH = re.compile(r"(/messages(/count_tokens)?|/chat/completions|/responses)$")
# Claude Code and friends make side calls next to the agent loop; they are recorded and
# marked so the merge can leave them out of the conversation.
# Only tool-less calls qualify, and only on these phrases: a misread agent call would drop
# out of the conversation.
_TITLE_PROMPT = re.compile(
    r"isNewTopic|new conversation topic|\b(generate|write|create|suggest)\b[^.\n]{0,60}\btitle\b", re.IGNORECASE
)
_BACKGROUND_PROMPT = re.compile(
    r"process Bash commands|command prefix|Extract any file paths|summar(y|ize) (of )?(this|the) conversation",
    re.IGNORECASE,
)

RAW_BODY_CAP = 64 * 1024  # of a body that is not JSON: enough to see what it was
_BLOCKING_WAIT_S = 0.005  # see _written
_REMEMBER_CLOSED = 10_000  # enough to outlast any late second firing of a hook

_exchange: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("trajhub_exchange", default=None)


def _boot_id() -> str | None:
    """Names this host's monotonic clock: the same in every process and container on it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: readers order by the wall clock
        return None


CLOCK = _boot_id()
HOST = socket.gethostname()


def recordings_dir() -> Path:
    explicit = os.environ.get("TRAJHUB_RECORDINGS_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("TRAJHUB_HOME", ".trajhub")) / "recordings"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


# -- credentials --------------------------------------------------------------------------
def redact(value: Any) -> Any:
    """`value` with every credential-named key's value replaced; copies only what changes,
    so objects litellm still sends to the client are never mutated."""
    if isinstance(value, dict):
        out = None
        for key, item in value.items():
            new = REDACTED if isinstance(key, str) and _CREDENTIAL_KEY.match(key) and item else redact(item)
            if new is not item:
                out = dict(value) if out is None else out
                out[key] = new
        return value if out is None else out
    if isinstance(value, list):
        out = None
        for index, item in enumerate(value):
            new = redact(item)
            if new is not item:
                out = list(value) if out is None else out
                out[index] = new
        return value if out is None else out
    if hasattr(value, "model_dump"):
        return redact(value.model_dump(mode="json", exclude_none=True))
    return value


def known_secrets(environ: dict[str, str] | None = None) -> list[bytes]:
    """Secret values the proxy holds (master key, upstream keys), longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if (k == "LITELLM_MASTER_KEY" or _SECRET_ENV.search(k)) and len(v) >= 8}
    return sorted((v.encode() for v in values), key=len, reverse=True)


def scrub(line: bytes, secrets: list[bytes]) -> bytes:
    for secret in secrets:
        if secret in line:
            line = line.replace(secret, REDACTED.encode())
    # The regex scans every byte; the plain searches that gate it are ten times faster.
    if any(prefix in line for prefix in _KEY_PREFIXES):
        line = _KEY_SHAPED.sub(REDACTED.encode(), line)
    return line


def serialize(record: dict, secrets: list[bytes]) -> bytes:
    """One JSON line with credentials removed."""
    line = _dumps(record)
    lowered = line.lower()
    # Redacting walks the whole record; do it only when a key could name a credential.
    if any(hint in lowered for hint in _CREDENTIAL_HINTS):
        line = _dumps(redact(record))
    return scrub(line, secrets) + b"\n"


# -- writing --------------------------------------------------------------------------------
class JsonlWriter:
    """One thread that owns every recordings file: redact, serialize, scrub, write one line."""

    def __init__(self, directory: Path, fsync: bool = False, max_open: int = 256):
        self.directory = directory
        self.fsync = fsync
        self.secrets = known_secrets()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._max_open = max_open
        self._thread = threading.Thread(target=self._run, name="trajhub-recorder", daemon=True)
        self._thread.start()

    def path(self, run_id: str | None) -> Path:
        return self.directory / f"{run_id or UNATTRIBUTED}.jsonl"

    def submit(self, record: dict) -> Future:
        done: Future = Future()
        self._queue.put((record, done))
        return done

    def _run(self) -> None:
        while True:
            record, done = self._queue.get()
            try:
                self._write(record)
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits for the line
                done.set_exception(error)
            else:
                done.set_result(None)

    def _write(self, record: dict) -> None:
        if record["status"] == "ok" and record["call_kind"] != "count_tokens":
            record["cost_usd"] = cost_usd(record["litellm_model"], record["usage"])
        line = serialize(record, self.secrets)
        fd = self._fd(record.get("run_id"))
        view = memoryview(line)
        while view:  # a regular file takes it in one write; loop in case it does not
            view = view[os.write(fd, view) :]
        if self.fsync:
            os.fsync(fd)

    def _fd(self, run_id: str | None) -> int:
        name = run_id or UNATTRIBUTED
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(run_id), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A killed proxy left half a line: end it, so the next stands alone. (Another process's
            # line still being written looks the same; the newline then lands after it, a blank line.)
            os.write(fd, b"\n")
        self._fds[name] = fd
        if len(self._fds) > self._max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd


# -- one HTTP exchange and one call ---------------------------------------------------------
class _Exchange:
    """What the middleware saw of one HTTP request; shared with the hooks via a contextvar."""

    def __init__(self, path: str, headers: dict[str, str]):
        self.path = path
        self.headers = headers
        self.received_at = time.time()
        self.received_ns = time.monotonic_ns()
        self.chunks: list[bytes] = []
        self.request: dict | None = None
        self.run_id: str | None = None
        self.call_id: str | None = None  # set when a hook opened a call for it
        self.closed = False  # a record for this exchange was written
        self.pending: list[Future] = []  # its record's write, not yet confirmed
        self.forwarded_to: str | None = None  # forwarding.py sent the body as is to this model
        self.refusal: tuple[int, str, str] | None = None  # refused before litellm sees it


class _ClientLeft(Exception):
    """The client disconnected before its request body was complete."""


class _HttpResponse:
    """What the client got of a call no hook saw: the status and the body, or a stream's
    events assembled as they pass."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.chunks: list[bytes] = []
        self.sse: tuple[SseParser, Any] | None = None
        self.first_token_at: float | None = None
        self.error: dict | None = None
        self.timed = False  # a forwarded call: its output time is noted

    def start(self, message: dict, exchange: _Exchange, wire_format: str) -> None:
        self.status = message["status"]
        content_type = dict(message.get("headers") or []).get(b"content-type", b"")
        if b"text/event-stream" in content_type:
            self.sse = (SseParser(), _ASSEMBLERS[wire_format]())
        self.timed = exchange.forwarded_to is not None and 200 <= self.status < 300

    def add(self, chunk: bytes) -> None:
        if self.sse is None:
            self.chunks.append(chunk)
            if self.timed and self.first_token_at is None:
                self.first_token_at = time.time()  # non-stream: all at once
            return
        parser, assembler = self.sse
        for event in parser.feed(chunk):
            if assembler.add(event) and self.first_token_at is None:
                self.first_token_at = time.time()

    def failed(self, status: int, error: dict) -> None:
        # Once the response started the client had its status; the error says what broke.
        self.status = self.status or status
        self.error = error

    def result(self) -> tuple[Any, dict | None]:
        """The response body (a stream's assembled) and its error, if any."""
        if self.sse is not None:
            assembler = self.sse[1]
            return assembler.result(), self.error or assembler.error
        body = b"".join(self.chunks)
        try:
            return (_loads(body) if body else None), self.error
        except ValueError:
            return unparsed_body(body), self.error


async def _send_json(send, status: int, body: dict) -> None:
    data = _dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def unparsed_body(raw: bytes) -> dict:
    """A body that is not a JSON object, as text (base64 when not UTF-8), cut at
    RAW_BODY_CAP characters (bytes) with a note."""
    try:
        value, unit = raw.decode("utf-8"), "characters"  # decoded whole: the cut splits no character
    except UnicodeDecodeError:
        value, unit = raw, "bytes"
    body = (
        {"_unparsed": value[:RAW_BODY_CAP]}
        if unit == "characters"
        else {"_unparsed_base64": base64.b64encode(value[:RAW_BODY_CAP]).decode("ascii")}
    )
    if len(value) > RAW_BODY_CAP:
        body["_truncated"] = f"kept the first {RAW_BODY_CAP} of {len(value)} {unit}"
    return body


class _Call:
    def __init__(self, record: dict):
        self.record = record
        self.first_token_at: float | None = None


def _wire_format(path: str, call_type: str | None = None) -> str:
    if call_type in ("acompletion", "completion") or path.endswith("/chat/completions"):
        return "openai_chat"
    if call_type in ("aresponses", "responses") or path.endswith("/responses"):
        return "openai_responses"
    return "anthropic_messages"


def _system_text(request: dict) -> str:
    system = request.get("system") or request.get("instructions") or ""
    if isinstance(system, list):
        system = " ".join(b.get("text", "") for b in system if isinstance(b, dict))
    if not system:
        for message in request.get("messages") or []:
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                content = message.get("content")
                system += content if isinstance(content, str) else json.dumps(content)
    return system if isinstance(system, str) else str(system)


def call_kind(path: str, request: dict, headers: dict[str, str]) -> str:
    """agent | count_tokens | title | background: explicit header first, then the shape."""
    declared = headers.get(CALL_KIND_HEADER)
    if declared in ("agent", "count_tokens", "title", "background"):
        return declared
    if path.endswith("/count_tokens"):
        return "count_tokens"
    if request.get("tools"):
        return "agent"
    system = _system_text(request)
    if _TITLE_PROMPT.search(system):
        return "title"
    if _BACKGROUND_PROMPT.search(system) or request.get("max_tokens") == 1:
        return "background"
    return "agent"


def find_run_id(headers: dict[str, str], request: dict) -> str | None:
    """The run id from the header, else a litellm tag, else body metadata."""
    holders = [h for h in (request, request.get("metadata"), request.get("litellm_metadata")) if isinstance(h, dict)]
    tags = [t.strip() for t in headers.get("x-litellm-tags", "").split(",")]
    tags += [t for h in holders if isinstance(h.get("tags"), list) for t in h["tags"] if isinstance(t, str)]
    candidates = [headers.get(RUN_HEADER)]
    candidates += [t[len(RUN_TAG_PREFIX) :] for t in tags if t.startswith(RUN_TAG_PREFIX)]
    candidates += [h.get("trajhub_run") for h in holders[1:]]
    for candidate in candidates:
        if isinstance(candidate, str) and _RUN_ID.match(candidate.strip()):
            return candidate.strip()
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def usage_of(wire_format: str, response: dict | None) -> dict:
    """Token counts in one shape; input_tokens counts every prompt token, cached or not."""
    usage = (response or {}).get("usage") or {}
    if wire_format == "anthropic_messages":
        read, created = _int(usage.get("cache_read_input_tokens")), _int(usage.get("cache_creation_input_tokens"))
        return {
            "input_tokens": _int(usage.get("input_tokens")) + read + created,
            "output_tokens": _int(usage.get("output_tokens")),
            "cache_read_tokens": read,
            "cache_creation_tokens": created,
        }
    if wire_format == "openai_chat":
        details = usage.get("prompt_tokens_details") or {}
        return {
            "input_tokens": _int(usage.get("prompt_tokens")),
            "output_tokens": _int(usage.get("completion_tokens")),
            "cache_read_tokens": _int(details.get("cached_tokens") or usage.get("cache_read_input_tokens")),
            "cache_creation_tokens": _int(usage.get("cache_creation_input_tokens")),
        }
    details = usage.get("input_tokens_details") or {}
    return {
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_tokens": _int(details.get("cached_tokens")),
        "cache_creation_tokens": 0,
    }


_UNPRICED: set[str] = set()


def cost_usd(litellm_model: str | None, usage: dict) -> float | None:
    """From litellm's (offline) cost map; None for a model it does not price."""
    if not litellm_model or "/" not in litellm_model or litellm_model in _UNPRICED:
        return None
    import litellm

    provider, model = litellm_model.split("/", 1)
    try:
        prompt, completion = litellm.cost_per_token(
            model=model,
            custom_llm_provider=provider,
            usage_object=litellm.Usage(
                prompt_tokens=usage["input_tokens"],
                completion_tokens=usage["output_tokens"],
                cache_read_input_tokens=usage["cache_read_tokens"],
                cache_creation_input_tokens=usage["cache_creation_tokens"],
                prompt_tokens_details={"cached_tokens": usage["cache_read_tokens"]},
            ),
        )
    except Exception:  # noqa: BLE001 - litellm raises several types for an unmapped model
        _UNPRICED.add(litellm_model)
        return None
    return round(prompt + completion, 10)


def error_of(exception: BaseException) -> dict:
    message = getattr(exception, "message", None) or str(exception) or type(exception).__name__
    return {"type": type(exception).__name__, "message": str(message)}


def status_of(exception: BaseException, default: int = 500) -> int:
    """The HTTP status an exception stands for; `default` when it carries none (a timeout)."""
    status = getattr(exception, "status_code", None) or getattr(exception, "code", None)
    return int(status) if str(status).isdigit() else default


def native(response: Any) -> dict | None:
    """A response object as its JSON body, without litellm's private fields."""
    if response is None:
        return None
    if hasattr(response, "model_dump"):
        body = response.model_dump(mode="json", exclude_none=True)
    elif isinstance(response, dict):
        body = dict(response)
    else:
        return {"_unparsed": str(response)}
    body.pop("_hidden_params", None)
    return body


# -- stream assembly ------------------------------------------------------------------------
class SseParser:
    """Server-sent events from byte chunks split anywhere: yields each event's JSON data."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[dict]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            data = b"\n".join(line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:"))
            if data and data != b"[DONE]":
                try:
                    events.append(_loads(data))
                except ValueError:
                    events.append({"type": "_unparsed", "data": data.decode("utf-8", "replace")})
        return events


def _event(chunk: Any) -> dict:
    if hasattr(chunk, "model_dump"):
        return chunk.model_dump(mode="json", exclude_none=True)
    return chunk if isinstance(chunk, dict) else {"type": "_unparsed", "data": str(chunk)}


class AnthropicAssembler:
    """Anthropic message events -> the non-stream message, blocks in their original order."""

    def __init__(self) -> None:
        self.message: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.partial_json: dict[int, str] = {}
        self.error: dict | None = None

    def add(self, event: dict) -> bool:
        """Take one event; True if it carried model output (for the first-token time)."""
        kind = event.get("type")
        if kind == "message_start":
            self.message = dict(event.get("message") or {})
        elif kind == "content_block_start":
            self.blocks[event["index"]] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            block = self.blocks.setdefault(event["index"], {})
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif dtype == "signature_delta":
                block["signature"] = block.get("signature", "") + delta.get("signature", "")
            elif dtype == "input_json_delta":
                self.partial_json[event["index"]] = self.partial_json.get(event["index"], "") + delta.get(
                    "partial_json", ""
                )
            elif dtype == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
            else:
                block.setdefault("_deltas", []).append(delta)
            return True
        elif kind == "content_block_stop":
            self._finish_block(event.get("index"))
        elif kind == "message_delta":
            message = self.message if self.message is not None else {}
            message.update(event.get("delta") or {})
            message["usage"] = dict(message.get("usage") or {}, **(event.get("usage") or {}))
            self.message = message
        elif kind == "error":
            self.error = event.get("error") or {"type": "error", "message": str(event)}
        return False

    def _finish_block(self, index: int | None) -> None:
        raw = self.partial_json.pop(index, None)
        if raw is not None and index in self.blocks:
            try:
                self.blocks[index]["input"] = json.loads(raw) if raw else {}
            except ValueError:
                self.blocks[index]["input_json"] = raw  # kept verbatim: the model sent bad JSON

    def result(self) -> dict | None:
        for index in list(self.partial_json):
            self._finish_block(index)
        if self.message is None and not self.blocks:
            return None
        message = dict(self.message or {})
        message["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        return message


def _field(obj: Any, name: str) -> Any:
    """A field of a parsed event (dict) or of litellm's typed chunk, without dumping it:
    dumping every chunk costs more than the rest of the recorder together."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class ChatAssembler:
    """OpenAI chat chunks (parsed or litellm's ModelResponseStream) -> the chat completion."""

    def __init__(self) -> None:
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage: Any = None
        self.error: dict | None = None

    def add(self, chunk: Any) -> bool:
        error = _field(chunk, "error")
        if error and not _field(chunk, "choices"):
            self.error = native(error) if not isinstance(error, str) else {"message": error}
            return False
        if not self.head:
            self.head = {
                k: v for k in ("id", "created", "model", "system_fingerprint") if (v := _field(chunk, k)) is not None
            }
        if _field(chunk, "usage"):
            self.usage = _field(chunk, "usage")
        produced = False
        for part in _field(chunk, "choices") or ():
            index = _field(part, "index") or 0
            choice = self.choices.setdefault(index, {"message": {"role": "assistant"}})
            message, delta = choice["message"], _field(part, "delta")
            if delta is not None:
                for key in ("content", "reasoning_content"):
                    if piece := _field(delta, key):
                        message[key] = message.get(key, "") + piece
                        produced = True
                for block in _field(delta, "thinking_blocks") or ():
                    self._thinking(message, native(block))
                    produced = True
                for call in _field(delta, "tool_calls") or ():
                    self._tool_call(message, call)
                    produced = True
            if finish := _field(part, "finish_reason"):
                choice["finish_reason"] = finish
        return produced

    @staticmethod
    def _thinking(message: dict, block: dict) -> None:
        blocks = message.setdefault("thinking_blocks", [])
        last = blocks[-1] if blocks else None
        # A signature ends a thinking block; a new block type starts a new one.
        if (
            last is None
            or last.get("type") != block.get("type")
            or last.get("signature")
            or block.get("type") == "redacted_thinking"
        ):
            blocks.append(dict(block))
            return
        last["thinking"] = last.get("thinking", "") + block.get("thinking", "")
        if block.get("signature"):
            last["signature"] = block["signature"]

    @staticmethod
    def _tool_call(message: dict, delta: Any) -> None:
        calls = message.setdefault("tool_calls", [])
        index = _field(delta, "index")
        index = len(calls) if index is None else index
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if call_id := _field(delta, "id"):
            call["id"] = call_id
        function = _field(delta, "function")
        if function is not None:
            call["function"]["name"] += _field(function, "name") or ""
            call["function"]["arguments"] += _field(function, "arguments") or ""

    def result(self) -> dict | None:
        if not self.head and not self.choices:
            return None
        body = dict(
            self.head, object="chat.completion", choices=[dict(self.choices[i], index=i) for i in sorted(self.choices)]
        )
        for choice in body["choices"]:
            choice["message"].setdefault("content", None)
        if self.usage is not None:
            body["usage"] = native(self.usage)
        return body


class ResponsesAssembler:
    """OpenAI Responses events -> the final response object (from response.completed)."""

    def __init__(self) -> None:
        self.response: Any = None
        self.items: dict[int, Any] = {}
        self.error: dict | None = None

    def add(self, event: Any) -> bool:
        kind = _field(event, "type") or ""
        if kind in (
            "response.created",
            "response.in_progress",
            "response.completed",
            "response.incomplete",
            "response.failed",
        ):
            self.response = _field(event, "response") or self.response
            if kind == "response.failed":
                self.error = native(_field(self.response, "error")) or {"type": kind, "message": ""}
        elif kind == "response.output_item.done":
            index = _field(event, "output_index")
            self.items[len(self.items) if index is None else index] = _field(event, "item")
        elif kind == "error":
            self.error = {"type": _field(event, "code") or "error", "message": _field(event, "message") or ""}
        return kind.endswith(".delta")

    def result(self) -> dict | None:
        if self.response is None and not self.items:
            return None
        response = native(self.response) or {}
        if self.items and not response.get("output"):
            response["output"] = [native(self.items[i]) for i in sorted(self.items)]
        return response


_ASSEMBLERS = {
    "anthropic_messages": AnthropicAssembler,
    "openai_chat": ChatAssembler,
    "openai_responses": ResponsesAssembler,
}


# -- the logger -----------------------------------------------------------------------------
class TrajectoryLogger(CustomLogger):
    trajhub_recorder = True  # how start_proxy.py's middleware finds this instance

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__()
        self.writer = JsonlWriter(directory or recordings_dir(), fsync=os.environ.get("TRAJHUB_RECORDER_FSYNC") == "1")
        self._open: dict[str, _Call] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()  # recently closed call ids

    # -- HTTP exchanges (from start_proxy.py's middleware) -------------------------------
    async def handle_http(self, app, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _RECORDED_PATH.search(scope["path"]):
            return await app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        exchange = _Exchange(scope["path"], headers)
        token = _exchange.set(exchange)
        response = _HttpResponse()

        async def send_recorded(message):
            if message["type"] == "http.response.start":
                response.start(message, exchange, _wire_format(exchange.path))
            elif message["type"] == "http.response.body":
                last = not message.get("more_body")
                if exchange.call_id is None:
                    response.add(message.get("body", b""))
                    if last and not exchange.closed:
                        # No hook saw this call (forwarded, count_tokens, refused early): record it here.
                        self._close_http(exchange, response)
                if last:
                    # Durability: the client sees the end of a call only once its line is written.
                    await _written(exchange.pending)
            await send(message)

        failure: BaseException | None = None
        try:
            # The whole body first: the record keeps it, and litellm reads it all anyway.
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise _ClientLeft()
                exchange.chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            raw = b"".join(exchange.chunks)
            exchange.chunks = []
            self._received(exchange, raw)
            if exchange.refusal is not None:
                # litellm answers some of these with a bare 500 (its auth error handler raises).
                status, kind, why = exchange.refusal
                return await _send_json(send_recorded, status, {"error": {"type": kind, "message": why}})
            replayed = False

            async def receive_replayed():
                nonlocal replayed
                if replayed:
                    return await receive()  # the client's disconnect, when it comes
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}

            await app(scope, receive_replayed, send_recorded)
        except Exception as error:
            failure = error
            if response.status is not None:
                raise  # the client has its status already: the connection drops
            if not isinstance(error, _ClientLeft):
                log.error("%s failed: %r", scope["path"], error, exc_info=error)
                self._close_unfinished(exchange, response, error)  # recorded before the client hears
                await _send_json(
                    send_recorded,
                    500,
                    {
                        "error": {
                            "type": "proxy_error",
                            "message": (f"the proxy failed on this request: {type(error).__name__}: {error}"),
                        }
                    },
                )
        except BaseException as error:  # cancelled: the client left
            failure = error
            raise
        finally:
            _exchange.reset(token)
            self._close_unfinished(exchange, response, failure)

    def forwarded(self, litellm_model: str) -> None:
        """forwarding.py sends this exchange's body upstream as is: no hook sees it, the
        middleware records it."""
        exchange = _exchange.get()
        if exchange is not None:
            exchange.forwarded_to = litellm_model

    def _received(self, exchange: _Exchange, raw: bytes) -> None:
        try:
            request = _loads(raw) if raw else None
        except ValueError:
            request = None
        exchange.request = request if isinstance(request, dict) else unparsed_body(raw)
        if _keys_required() and not any(h in exchange.headers for h in _KEY_HEADERS):
            exchange.refusal = (
                401,
                "authentication_error",
                "no API key: send the proxy's key as `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
        elif not isinstance(request, dict):
            exchange.refusal = (
                400,
                "invalid_request_error",
                "the request body is empty" if not raw else "the request body must be a JSON object",
            )
        exchange.run_id = find_run_id(exchange.headers, exchange.request)

    def _close_unfinished(self, exchange: _Exchange, response: _HttpResponse, failure: BaseException | None) -> None:
        """Record a request that ended without a recorded response: the client left, or the
        handler raised (the server then answers 500)."""
        left = failure is None or isinstance(failure, (_ClientLeft, asyncio.CancelledError))
        status, error = (
            (499, {"type": "client_disconnected", "message": "the request ended before a response"})
            if left
            else (500, error_of(failure))
        )
        dangling = self._take({"litellm_call_id": exchange.call_id}) if exchange.call_id else None
        if dangling is not None:  # the request ended with no closing hook
            dangling.record.update(status="error", http_status=status, ended_at=time.time(), error=error)
            exchange.closed = True
            self.writer.submit(dangling.record)
        elif exchange.call_id is None and not exchange.closed:
            if exchange.request is None:  # the client left before its body was complete
                self._received(exchange, b"".join(exchange.chunks))
            response.failed(status, error)
            self._close_http(exchange, response)

    def _close_http(self, exchange: _Exchange, response: _HttpResponse) -> None:
        status = response.status
        ok = 200 <= status < 300
        wire_format = _wire_format(exchange.path)
        record = self._new_record(
            exchange,
            exchange.request,
            wire_format,
            exchange.received_at,
            call_id=exchange.headers.get("x-litellm-call-id") or str(uuid.uuid4()),
        )
        body, error = response.result()
        if not ok and error is None:
            detail = body.get("error") if isinstance(body, dict) else None
            detail = detail if isinstance(detail, dict) else {"message": detail} if detail else {}
            error = {"type": detail.get("type") or f"http_{status}", "message": str(detail.get("message") or body)}
        kept = body if ok or response.sse is not None else None  # a stream keeps what arrived
        record.update(
            response=kept,
            status="error" if error else "ok",
            http_status=status,
            error=error,
            first_token_at=response.first_token_at,
            litellm_model=exchange.forwarded_to,
            usage=usage_of(wire_format, kept if record["call_kind"] != "count_tokens" else None),
        )
        if ok and record["call_kind"] == "count_tokens" and isinstance(body, dict):
            record["usage"]["input_tokens"] = _int(body.get("input_tokens"))
        exchange.closed = True
        self._submit(record)

    # -- records ------------------------------------------------------------------------
    def _new_record(
        self,
        exchange: _Exchange | None,
        request: dict,
        wire_format: str,
        started: float,
        call_id: str,
        headers: dict[str, str] | None = None,
        path: str | None = None,
        exact: bool = True,
    ) -> dict:
        headers = exchange.headers if exchange is not None else (headers or {})
        path = exchange.path if exchange is not None else (path or "")
        run_id = exchange.run_id if exchange is not None else find_run_id(headers, request)
        # Without the middleware `started` is litellm's arrival time: the same instant on the monotonic clock.
        started_ns = (
            exchange.received_ns if exchange is not None else time.monotonic_ns() - int((time.time() - started) * 1e9)
        )
        return {
            "record_version": RECORD_VERSION,
            "run_id": run_id,
            "call_id": call_id,
            "seq": None,  # numbered by raw_calls.read_run, in start order (see the module docstring)
            "started_at": started,
            "started_ns": started_ns,
            "clock": CLOCK,
            "recorded_by": f"{HOST}:{os.getpid()}",  # which replica and worker: several may serve a run
            "ended_at": None,
            "first_token_at": None,
            "endpoint": path,
            "wire_format": wire_format,
            "call_kind": call_kind(path, request, headers),
            "stream": bool(request.get("stream")),
            "model": request.get("model"),
            "request": request,
            "request_exact": exact,
            "request_headers": {k: headers[k] for k in _KEPT_HEADERS if k in headers},
            # What litellm sent upstream when it translated the request; null when the
            # upstream got `request` as is (model aside) or nothing was sent.
            "upstream_request": None,
            "response": None,
            "usage": usage_of(wire_format, None),
            "status": None,
            "http_status": None,
            "error": None,
            "litellm_model": None,
            "cost_usd": None,
        }

    def _submit(self, record: dict) -> Future | None:
        """Hand a finished record to the writer; the write to wait for, if the caller must."""
        record["ended_at"] = time.time()
        written = self.writer.submit(record)
        exchange = _exchange.get()
        if exchange is None:
            return written
        exchange.pending.append(written)  # the middleware waits for it before the last bytes
        return None

    def _open_call(self, data: dict, call_type: str | None) -> _Call | None:
        call_id = data.get("litellm_call_id") or str(uuid.uuid4())
        if call_id in self._open or call_id in self._closed:  # a hook fired twice
            return None
        exchange = _exchange.get()
        if exchange is not None and exchange.request is not None and exchange.call_id is None:
            exchange.call_id = call_id
            started = exchange.received_at
            record = self._new_record(
                exchange, exchange.request, _wire_format(exchange.path, call_type), started, call_id
            )
        else:
            # Without the middleware: litellm's copy of the body, which it has added to.
            server_request = data.get("proxy_server_request") or {}
            path = _url_path(server_request.get("url", ""))
            started = server_request.get("arrival_time") or time.time()
            record = self._new_record(
                None,
                dict(server_request.get("body") or {}),
                _wire_format(path, call_type),
                started,
                call_id,
                headers=server_request.get("headers") or {},
                path=path,
                exact=False,
            )
        call = _Call(record)
        self._open[call_id] = call
        return call

    def _take(self, data: dict) -> _Call | None:
        """The open call for this request, now closed; None if it was closed already."""
        call = self._open.pop(data.get("litellm_call_id") or "", None)
        if call is not None:
            self._closed[call.record["call_id"]] = None
            while len(self._closed) > _REMEMBER_CLOSED:
                self._closed.popitem(last=False)
        return call

    @staticmethod
    def _litellm_model(data: dict) -> str | None:
        details = getattr(data.get("litellm_logging_obj"), "model_call_details", None) or {}
        model, provider = details.get("model"), details.get("custom_llm_provider")
        return f"{provider}/{model}" if model and provider else model

    @staticmethod
    def _upstream_request(data: dict) -> dict | None:
        details = getattr(data.get("litellm_logging_obj"), "model_call_details", None) or {}
        sent = (details.get("additional_args") or {}).get("complete_input_dict")
        if isinstance(sent, (str, bytes)):  # a stream's request: the JSON text that was sent
            try:
                sent = _loads(sent)
            except ValueError:
                return unparsed_body(sent.encode() if isinstance(sent, str) else sent)
        return dict(sent) if isinstance(sent, dict) else None

    async def _close(
        self, call: _Call, data: dict, response: dict | None, http_status: int, error: dict | None
    ) -> None:
        record = call.record
        record.update(
            response=response,
            first_token_at=call.first_token_at,
            usage=usage_of(record["wire_format"], response),
            status="error" if error else "ok",
            http_status=http_status,
            error=error,
            litellm_model=self._litellm_model(data),
            upstream_request=self._upstream_request(data),
        )
        exchange = _exchange.get()
        if exchange is not None and exchange.call_id == record["call_id"]:
            exchange.closed = True
        written = self._submit(record)
        if written is not None:
            await _written([written])

    # -- litellm hooks (each returns None: the request and response go on unchanged) ------
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if not _forwarded():  # a forwarded call is the middleware's to record
            self._open_call(data, call_type)

    async def async_post_call_success_hook(self, data, user_api_key_dict, response):
        call = self._take(data)
        if call is None:  # a second firing, or a call this logger never opened
            return
        call.first_token_at = call.first_token_at or time.time()  # non-stream: all at once
        await self._close(call, data, native(response), 200, None)

    async def async_post_call_failure_hook(
        self, request_data, original_exception, user_api_key_dict, traceback_str=None
    ):
        if _forwarded():
            return
        if request_data.get("litellm_call_id") not in self._open:
            # Failed before the pre-call hook ran (unknown model, a rejected param): open it now.
            self._open_call(request_data, None)
        call = self._take(request_data)
        if call is None:
            return
        await self._close(call, request_data, None, status_of(original_exception), error_of(original_exception))

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response, request_data):
        call = self._open.get(request_data.get("litellm_call_id") or "")
        if call is None:
            async for chunk in response:
                yield chunk
            return
        assembler = _ASSEMBLERS[call.record["wire_format"]]()
        parser = SseParser()  # anthropic-native streams arrive as raw SSE bytes
        error, status, yielded = None, 200, False
        try:
            async for chunk in response:
                if isinstance(chunk, (bytes, str)):
                    events = parser.feed(chunk.encode() if isinstance(chunk, str) else chunk)
                else:  # typed chunks: the anthropic assembler reads dicts, the others either
                    events = [_event(chunk) if isinstance(assembler, AnthropicAssembler) else chunk]
                for event in events:
                    if assembler.add(event) and call.first_token_at is None:
                        call.first_token_at = time.time()
                yielded = True
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # 499: nginx's "client closed request"; the client saw no end to the response
            error, status = {"type": "client_disconnected", "message": "the client left mid-stream"}, 499
            raise
        except Exception as exc:
            # Once bytes went out the client had its 200; an error before that is litellm's to map.
            error = error_of(exc)
            status = 200 if yielded else status_of(exc, default=502)
            raise
        else:
            error = assembler.error  # an error event inside a 200 stream
        finally:
            # Closed here, before the proxy ends the response; the failure hook that follows
            # a broken stream finds the call closed and writes nothing. The record is handed
            # to the writer before any await, so a cancelled task still gets it written.
            if self._take(request_data) is not None:
                await self._close(call, request_data, assembler.result(), status, error)


def _keys_required() -> bool:
    """Whether litellm authenticates clients: it does once it has a master key."""
    return getattr(sys.modules.get("litellm.proxy.proxy_server"), "master_key", None) is not None


def _forwarded() -> bool:
    exchange = _exchange.get()
    return exchange is not None and exchange.forwarded_to is not None


def _url_path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0] if "://" in url else url


async def _written(pending: list[Future]) -> None:
    """Return once every pending line is written.

    First a short blocking wait: the writer thread confirms in well under a millisecond,
    while an await would let the loop run litellm's queued background work ahead of this
    response (measured: +15-25% latency per call). Past the bound (a slow disk) it awaits,
    so a stalled disk holds back the calls that are finishing, never the whole loop.
    """
    while pending:
        written = pending.pop()
        if not written.done():
            futures.wait([written], timeout=_BLOCKING_WAIT_S)
        if not written.done():
            await asyncio.wrap_future(written)
        written.result()  # a failed write fails the response rather than pass silently


instance = TrajectoryLogger()
