"""A recorded run as a replay needs it, and how its calls are served again.

`load_recorded_run` takes a run's calls from the store (`raw_calls` + `message_blobs`,
rebuilt to the proxy's records), its `runs` row and its task. `ReplayPolicy` is a
scripted-upstream policy that answers each request with the recorded response of the
call it stands for.

Which recorded call a request stands for: clients such as Claude Code make several kinds
of calls (the main agent, subagents, titles, count_tokens), some at once, so there is no
single order to follow. Calls are grouped in *lanes*, and each lane is served in recorded
order. A lane is (wire format or count_tokens, the tool names offered, the first user
message after masking); a request whose lane the recording lacks falls back to (wire
format, first user message), then to the wire format alone, so an agent that changed
course still gets answers and its divergence is measured rather than cut short. A request
beyond what its lane recorded gets HTTP 400 (which clients do not retry), so the agent
stops. The comparison (compare.py) pairs the replay's calls with the same `CallMatcher`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from dataclasses import dataclass

import pyarrow.compute as pc

from trajhub_assets.config import ModelConfig, ProjectConfig
from trajhub_assets.errors import ConfigError, TrajhubError
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.run_id import parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.recording.scripted_upstream import Fail, Reply, ScriptedRequest
from trajhub_assets.replay.masks import mask_text
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import stored_tasks

# The scripted upstream speaks these; a recorded Responses API call cannot be served again.
REPLAYABLE_WIRE_FORMATS = ("anthropic_messages", "openai_chat")
EXHAUSTED = "trajhub replay: the recording has no further call for this request"


class ReplayError(TrajhubError):
    """A run cannot be replayed as asked (not in the store, not replayable)."""


@dataclass(frozen=True)
class RecordedRun:
    run_id: str
    records: list[dict]  # the proxy's records of the run, in seq order
    row: dict  # its `runs` row: scaffold, backend, outcome
    task: dict  # the task record it ran
    model: ModelConfig  # the recorded name, route and scaffold; sampling from the config


def load_recorded_run(store: Store, run_id: str, config: ProjectConfig | None = None) -> RecordedRun:
    """The run's calls, `runs` row and task from the store."""
    run = parse_run_id(run_id)
    partition = {"model": run.model_key, "instance": run.instance}
    calls = store.read(RAW_CALLS, partition)
    calls = calls.filter(pc.equal(calls["run_id"], run_id))
    if calls.num_rows == 0:
        raise ReplayError(f"run {run_id}: no recorded calls in raw_calls {partition}")
    records = rebuild_records(calls, store.read(MESSAGE_BLOBS, partition))
    row = next((r for r in store.read(RUNS, partition).to_pylist() if r["run_id"] == run_id), None)
    if row is None:
        raise ReplayError(f"run {run_id}: no row in the runs table {partition}")
    task = stored_tasks(store).get(run.instance)
    if task is None:
        raise ReplayError(f"run {run_id}: task {run.instance!r} is not in the stored tasks table")
    return RecordedRun(run_id, records, row, task, recorded_model(row, config))


def recorded_model(row: dict, config: ProjectConfig | None) -> ModelConfig:
    """The model as the run used it; where it is (api_base, api_key_env) and its sampling come
    from the config when it still has the model (a branch continues it there)."""
    model = ModelConfig(name=row["model_name"], route=row["route"], scaffold=row["scaffold"])
    try:
        configured = config.model(model.name) if config is not None else None
    except ConfigError:
        configured = None
    if configured is None:
        return model
    return model.model_copy(update={key: getattr(configured, key) for key in ("api_base", "api_key_env", "sampling")})


# -- lanes --------------------------------------------------------------------------------
def family(wire_format: str, call_kind: str | None = None) -> str:
    """The upstream endpoint a call goes to: count_tokens has one of its own."""
    return "count_tokens" if call_kind == "count_tokens" or wire_format == "count_tokens" else wire_format


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        block.get("text", "")
        for block in content or []
        if isinstance(block, dict) and block.get("type") in ("text", "input_text")
    )


def _is_tool_result(message: dict) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def first_user_text(request: dict) -> str:
    for message in request.get("messages") or request.get("input") or []:
        if isinstance(message, dict) and message.get("role") == "user" and not _is_tool_result(message):
            return _text(message.get("content"))
    return ""


def tool_names(request: dict) -> tuple[str, ...]:
    names = [
        (tool.get("function") or tool).get("name", "") for tool in request.get("tools") or [] if isinstance(tool, dict)
    ]
    return tuple(sorted(names))


def lane_keys(call_family: str, request: dict) -> tuple[tuple, ...]:
    """The request's lanes, most specific first."""
    first = hashlib.sha256(mask_text(first_user_text(request)).encode()).hexdigest()[:16]
    return (call_family, tool_names(request), first), (call_family, first), (call_family,)


class CallMatcher:
    """Pairs requests, as they come, with recorded calls: per lane, in recorded order."""

    def __init__(self, records: list[dict]):
        self._lanes: dict[tuple, list[int]] = defaultdict(list)
        for index, record in enumerate(records):
            for key in lane_keys(family(record["wire_format"], record["call_kind"]), record["request"]):
                self._lanes[key].append(index)
        self._taken: set[int] = set()
        self._lock = threading.Lock()  # the upstream serves concurrent requests

    def match(self, call_family: str, request: dict) -> int | None:
        """The index of the recorded call this request stands for; None: nothing left."""
        with self._lock:
            for key in lane_keys(call_family, request):
                lane = self._lanes.get(key)
                if lane:  # the most specific lane the recording has decides, even when spent
                    index = next((i for i in lane if i not in self._taken), None)
                    if index is not None:
                        self._taken.add(index)
                    return index
            return None


# -- serving ------------------------------------------------------------------------------
def _usage(response: dict) -> dict:
    usage = response.get("usage") or {}
    if "prompt_tokens" in usage:  # OpenAI chat: prompt tokens include the cached ones
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return {
            "input_tokens": (usage.get("prompt_tokens") or 0) - cached,
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_read_tokens": cached,
        }
    return {
        "input_tokens": usage.get("input_tokens") or 0,
        "output_tokens": usage.get("output_tokens") or 0,
        "cache_read_tokens": usage.get("cache_read_input_tokens") or 0,
        "cache_creation_tokens": usage.get("cache_creation_input_tokens") or 0,
    }


def reply_for(record: dict) -> Reply | Fail:
    """What the upstream said to this call, to be said again (failures included)."""
    response = record.get("response")
    if record["status"] != "ok" or not isinstance(response, dict):
        status = record.get("http_status") or 500
        message = (record.get("error") or {}).get("message") or "recorded failure"
        # 499: the client gave up; the nearest thing an upstream can do is fail.
        return Fail(status if 400 <= status < 600 and status != 499 else 500, message)
    if family(record["wire_format"], record["call_kind"]) == "count_tokens":
        return Reply([], input_tokens=response.get("input_tokens") or 0)
    if record["wire_format"] == "anthropic_messages":
        return Reply(
            [dict(block) for block in response.get("content") or []],
            stop_reason=response.get("stop_reason"),
            **_usage(response),
        )
    message = (response.get("choices") or [{}])[0].get("message") or {}
    blocks = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    # The model's own argument text, served verbatim: the client echoes it in later requests.
    # `index` too where the recording has it (litellm adds it when it translates): the client
    # echoes it back.
    blocks += [
        {
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": call["function"].get("arguments") or "",
        }
        | ({"index": call["index"]} if "index" in call else {})
        for call in message.get("tool_calls") or []
    ]
    return Reply(blocks, **_usage(response))


def check_replayable(recorded: RecordedRun) -> None:
    formats = {r["wire_format"] for r in recorded.records} - set(REPLAYABLE_WIRE_FORMATS)
    if formats:
        raise ReplayError(
            f"run {recorded.run_id}: calls in {sorted(formats)} cannot be replayed "
            f"(the scripted upstream speaks {', '.join(REPLAYABLE_WIRE_FORMATS)})"
        )


class ReplayPolicy:
    """A ScriptedUpstream policy serving one recorded run's responses."""

    def __init__(self, recorded: RecordedRun):
        check_replayable(recorded)
        self.records = recorded.records
        self.matcher = CallMatcher(self.records)

    def __call__(self, request: ScriptedRequest) -> Reply | Fail:
        index = self.matcher.match(family(request.wire_format), request.body)
        if index is None:
            lane = lane_keys(family(request.wire_format), request.body)[0]
            return Fail(400, f"{EXHAUSTED} (lane {json.dumps(lane)})")
        return reply_for(self.records[index])
