"""Synthetic recorded runs for benchmarks/scale_pipeline.py: what the proxy would have written,
without agents, sandboxes or an upstream.

A run is one attempt of one (model, instance). Its calls are shaped as trajhub's recorder
writes them (proxy/trajectory_logger.py: record_version, run_id, call_id, seq, timing,
endpoint, wire_format, call_kind, request, response, usage, status, cost), and every call
repeats the growing conversation, as clients do:
- Claude Code-like models (anthropic_messages, streamed): a title side call first, thinking
  blocks in responses (dropped from the history sent back), tools Read/Grep/Bash/Edit/Write,
  a final text answer;
- builtin/Kilo-like models (openai_chat): a system message, tools shell/read_file/edit_file/
  write_file/finish, a finish call at the end.
A run explores, reads, edits and runs tests; tool errors, non-zero exit codes, repeated
calls, edits of unread files, invalid tool arguments and an overloaded-then-retried call
occur at per-model rates, so every rule has something to find. Lengths vary per model and
instance. Everything derives from (seed, model, instance): the same arguments give the same
bytes.

Tasks are the 72 real OctoCodingBench records (../shared/data), cycled to the size asked
with new instance ids, so checklists are real.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from trajhub_assets.recording.raw_calls import load_runs
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.scaffolds.builtin import ERROR_PREFIX
from trajhub_assets.store import Store

OCTOCODINGBENCH_TASKS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "octocodingbench" / "tasks_checklist_72.jsonl"
)
WORKSPACE = "/app"
TEST_COMMAND = "python -m pytest -q"

_WORDS = (
    "cache page item order user config token parse value index record batch queue event "
    "handler client server request response session result error retry buffer stream path "
    "schema field model store table query merge split limit offset count total state"
).split()


def _corpus(rng: random.Random, lines: int = 6000) -> list[str]:
    """Code-like lines that tool results are cut from (file contents, grep hits, test logs)."""
    templates = (
        "def {a}_{b}(self, {c}, {d}=None):",
        "    {a}_{b} = self.{c}.get({d!r}, {n})",
        "    if not {a}_{b}:",
        '        raise ValueError(f"{a} {b}: {{{c}}} is not a valid {d}")',
        "    return [{a} for {a} in {b}_{c} if {a}.{d} > {n}]",
        "class {A}{B}({C}Base):",
        '    """{A} {b} for the {c} {d}."""',
        "from {a}.{b} import {C}{D}, {c}_{d}",
        "    for {a}, {b} in enumerate(self.{c}_{d}):",
        "        self.{a}[{b}] = {c}_{d}({n})",
        "# {a} the {b} before the {c} is {d}",
        "    assert {a}_{b}({c}) == {n}",
    )
    out = []
    for _ in range(lines):
        a, b, c, d = (rng.choice(_WORDS) for _ in range(4))
        out.append(
            rng.choice(templates).format(
                a=a, b=b, c=c, d=d, A=a.title(), B=b.title(), C=c.title(), D=d.title(), n=rng.randrange(1000)
            )
        )
    return out


CORPUS = _corpus(random.Random(20251122))


def _lines(rng: random.Random, approx_chars: int) -> str:
    start = rng.randrange(len(CORPUS) - 200)
    out, size = [], 0
    for line in CORPUS[start:]:
        if size >= approx_chars:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


# -- models -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelProfile:
    name: str
    scaffold: str  # claudecode / droid speak anthropic_messages; builtin / kilo-dev openai_chat
    mean_steps: float
    result_scale: float  # how verbose its tool results get (what it reads, what it runs)
    error_rate: float  # tool calls that fail
    repeat_rate: float  # steps that repeat the previous read or search verbatim
    blind_edit_rate: float  # edits of files it never read
    invalid_args_rate: float
    skill: float  # chance the tests pass at the end
    thinking: bool
    max_steps: int = 60  # raised by benchmarks that grow the calls per run

    @property
    def key(self) -> str:
        return self.name.replace("/", "__")

    @property
    def wire_format(self) -> str:
        return "anthropic_messages" if self.scaffold in ("claudecode", "droid") else "openai_chat"

    @property
    def route(self) -> str:
        provider = "anthropic" if self.wire_format == "anthropic_messages" else "openai"
        return f"{provider}/{self.name.split('/', 1)[1]}"


def model_profiles(count: int, seed: int) -> list[ModelProfile]:
    """`count` models with different habits; the same seed gives the same models."""
    rng = random.Random(f"{seed}:models")
    # Pairs need runs with the same tools: models come in twos of one client style.
    scaffolds = ("claudecode", "droid", "builtin", "kilo-dev")
    return [
        ModelProfile(
            name=f"scale/model-{i:02d}",
            scaffold=scaffolds[i % len(scaffolds)],
            mean_steps=rng.uniform(6, 28),
            result_scale=rng.uniform(0.5, 1.6),
            error_rate=rng.uniform(0.01, 0.12),
            repeat_rate=rng.uniform(0.0, 0.12),
            blind_edit_rate=rng.uniform(0.0, 0.3),
            invalid_args_rate=rng.uniform(0.0, 0.04),
            skill=rng.uniform(0.2, 0.8),
            thinking=rng.random() < 0.6,
        )
        for i in range(count)
    ]


# -- tasks --------------------------------------------------------------------------------
def task_records(count: int) -> list[dict]:
    """`count` task records: the real OctoCodingBench ones, cycled, with new instance ids."""
    base = [json.loads(line) for line in OCTOCODINGBENCH_TASKS.read_text().splitlines() if line.strip()]
    records = []
    for index in range(count):
        record = dict(base[index % len(base)])
        record["instance_id"] = f"{index:04d}-{record['instance_id']}"[:100]
        record["test_command"] = TEST_COMMAND
        records.append(record)
    return records


# -- tools of the two client styles ---------------------------------------------------------
def _schema(required: list[str], optional: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": {name: {"type": "string"} for name in [*required, *optional]},
    }


ANTHROPIC_TOOLS = {  # name: (description, schema, path argument)
    "Read": ("Reads a file from the local filesystem.", _schema(["file_path"], ("offset", "limit"))),
    "Grep": ("Searches file contents with ripgrep.", _schema(["pattern"], ("path", "glob"))),
    "Bash": ("Executes a bash command in a persistent shell session.", _schema(["command"], ("description",))),
    "Edit": ("Performs exact string replacements in files.", _schema(["file_path", "old_string", "new_string"])),
    "Write": ("Writes a file to the local filesystem.", _schema(["file_path", "content"])),
}
OPENAI_TOOLS = {
    "read_file": ("Read a file of the workspace.", _schema(["path"])),
    "shell": ("Run a shell command in the workspace; returns its output and exit code.", _schema(["command"])),
    "edit_file": ("Replace one exact string in a file.", _schema(["path", "old", "new"])),
    "write_file": ("Write a whole file.", _schema(["path", "content"])),
    "finish": ("Stop and report to the user.", _schema(["summary"])),
}
CLAUDE_CODE_SYSTEM = (
    "You are Claude Code, Anthropic's official CLI for Claude. You are an interactive "
    "CLI tool that helps users with software engineering tasks. "
) * 40
BUILTIN_SYSTEM = (
    "You are a coding agent working in a repository at /app. Use the tools to inspect "
    "and change files, run the tests, and call finish with a summary when done. "
) * 12
TITLE_SYSTEM = (
    "Analyze if this message indicates a new conversation topic. If it does, extract a "
    "2-3 word title that captures the new topic. Format your response as a JSON object "
    "with two fields: 'isNewTopic' (boolean) and 'title' (string, or null if isNewTopic is false)."
)


# -- one run ------------------------------------------------------------------------------
@dataclass
class Action:
    tool: str  # a kind: search / read / edit / write / test / finish
    arguments: dict
    result: str
    is_error: bool = False


class _RunWriter:
    """Builds the calls of one run, step by step, as the recorder would write them."""

    def __init__(self, profile: ModelProfile, task: dict, run_id: str, rng: random.Random):
        self.profile, self.task, self.run_id, self.rng = profile, task, run_id, rng
        self.anthropic = profile.wire_format == "anthropic_messages"
        self.records: list[dict] = []
        self.clock = 1_760_000_000.0 + rng.uniform(0, 86_400 * 30)
        query = "\n\n".join(task["user_query"])
        if self.anthropic:
            self.messages = [{"role": "user", "content": [{"type": "text", "text": query}]}]
        else:
            system = (task.get("system_prompt") or "") + "\n\n" + BUILTIN_SYSTEM
            self.messages = [{"role": "system", "content": system}, {"role": "user", "content": query}]

    def _call_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _record(
        self,
        request: dict,
        response: dict | None,
        *,
        call_kind: str = "agent",
        error: dict | None = None,
        http_status: int = 200,
    ) -> None:
        started = self.clock
        latency = self.rng.uniform(1.5, 18.0) if error is None else self.rng.uniform(0.2, 2.0)
        self.clock += latency + self.rng.uniform(0.05, 3.0)
        prompt_chars = len(json.dumps(request, ensure_ascii=False))
        out_chars = len(json.dumps(response, ensure_ascii=False)) if response else 0
        input_tokens, output_tokens = prompt_chars // 4, out_chars // 4
        cached = int(input_tokens * 0.8) if self.anthropic and len(self.records) > 1 else 0
        self.records.append(
            {
                "record_version": 1,
                "run_id": self.run_id,
                "call_id": self._call_id(),
                "seq": len(self.records),
                "started_at": started,
                "ended_at": started + latency,
                "first_token_at": None if error else started + latency * 0.2,
                "endpoint": "/v1/messages" if self.anthropic else "/v1/chat/completions",
                "wire_format": self.profile.wire_format,
                "call_kind": call_kind,
                "stream": bool(request.get("stream")),
                "model": request["model"],
                "request": request,
                "request_exact": True,
                "request_headers": {
                    "user-agent": "claude-cli/2.0.69 (external, cli)" if self.anthropic else "OpenAI/Python 1.99.9",
                    "x-trajhub-run": self.run_id,
                },
                "response": response,
                "usage": {
                    "input_tokens": 0 if error else input_tokens,
                    "output_tokens": 0 if error else output_tokens,
                    "cache_read_tokens": 0 if error else cached,
                    "cache_creation_tokens": 0,
                },
                "status": "error" if error else "ok",
                "http_status": http_status,
                "error": error,
                "litellm_model": self.profile.route,
                "cost_usd": None
                if error
                else round((input_tokens - cached) * 3e-6 + cached * 3e-7 + output_tokens * 1.5e-5, 6),
            }
        )

    def title_call(self) -> None:
        request = {
            "model": "claude-haiku-4-5",
            "max_tokens": 512,
            "stream": True,
            "system": [{"type": "text", "text": TITLE_SYSTEM}],
            "messages": [{"role": "user", "content": self.task["user_query"][0]}],
        }
        text = json.dumps({"isNewTopic": True, "title": " ".join(self.rng.sample(_WORDS, 3)).title()})
        self._record(
            request,
            {
                "id": f"msg_{self._call_id()[:24]}",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
            },
            call_kind="title",
        )

    def _request(self) -> dict:
        if self.anthropic:
            return {
                "model": self.profile.route.split("/", 1)[1],
                "max_tokens": 32000,
                "stream": True,
                "system": [
                    {"type": "text", "text": CLAUDE_CODE_SYSTEM},
                    {"type": "text", "text": self.task.get("system_prompt") or "Follow CLAUDE.md."},
                ],
                "tools": [{"name": n, "description": d, "input_schema": s} for n, (d, s) in ANTHROPIC_TOOLS.items()],
                "messages": list(self.messages),
                "metadata": {"user_id": "bench-user"},
            }
        return {
            "model": self.profile.route.split("/", 1)[1],
            "temperature": 0.0,
            "tools": [
                {"type": "function", "function": {"name": n, "description": d, "parameters": s}}
                for n, (d, s) in OPENAI_TOOLS.items()
            ],
            "messages": list(self.messages),
        }

    def step(self, action: Action | None, say: str) -> None:
        """One agent call: the model answers `say` and calls `action`'s tool (None: final answer)."""
        request = self._request()
        if self.rng.random() < 0.02:  # the provider was overloaded; the client retried the same request
            status = 529 if self.anthropic else 429
            self._record(
                request,
                None,
                http_status=status,
                error={
                    "type": "overloaded_error" if self.anthropic else "RateLimitError",
                    "message": "Overloaded" if self.anthropic else "Rate limit reached, retry after 2s",
                },
            )
        tool_id = f"toolu_{self._call_id()[:24]}" if self.anthropic else f"call_{self._call_id()[:24]}"
        if self.anthropic:
            content = []
            if self.profile.thinking:
                content.append(
                    {
                        "type": "thinking",
                        "thinking": _lines(self.rng, self.rng.randint(100, 900)),
                        "signature": f"{self.rng.getrandbits(256):064x}",
                    }
                )
            content.append({"type": "text", "text": say})
            if action is not None:
                content.append({"type": "tool_use", "id": tool_id, "name": action.tool, "input": action.arguments})
            response = {
                "id": f"msg_{self._call_id()[:24]}",
                "type": "message",
                "role": "assistant",
                "model": request["model"],
                "content": content,
                "stop_reason": "tool_use" if action else "end_turn",
            }
            self._record(request, response)
            self.messages.append({"role": "assistant", "content": [b for b in content if b["type"] != "thinking"]})
            if action is not None:
                result = {"type": "tool_result", "tool_use_id": tool_id, "content": action.result}
                if action.is_error:
                    result["is_error"] = True
                self.messages.append({"role": "user", "content": [result]})
        else:
            message = {"role": "assistant", "content": say if action is None else None}
            if action is not None:
                message["tool_calls"] = [
                    {
                        "id": tool_id,
                        "type": "function",
                        "function": {"name": action.tool, "arguments": json.dumps(action.arguments)},
                    }
                ]
            response = {
                "id": f"chatcmpl-{self._call_id()[:24]}",
                "object": "chat.completion",
                "created": int(self.clock),
                "model": request["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if action else "stop"}],
            }
            self._record(request, response)
            self.messages.append(message)
            if action is not None:
                self.messages.append({"role": "tool", "tool_call_id": tool_id, "content": action.result})


class _Plan:
    """The actions of one run: explore, read, edit, test, in a model's habits."""

    def __init__(self, profile: ModelProfile, rng: random.Random):
        self.profile, self.rng = profile, rng
        self.anthropic = profile.wire_format == "anthropic_messages"
        self.files = [f"src/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}_{i}.py" for i in range(rng.randint(3, 9))]
        self.read: set[str] = set()
        self.last: Action | None = None

    def _size(self, low: int, high: int) -> int:
        return int(self.rng.randint(low, high) * self.profile.result_scale)

    def _path(self, path: str) -> str:
        return f"{WORKSPACE}/{path}" if self.anthropic else path

    def _error(self, kind: str) -> str:
        text = {
            "read": "File does not exist.",
            "edit": "String to replace not found in file.",
            "search": "rg: regex parse error: unclosed group",
        }.get(kind, "Permission denied")
        # Claude Code marks the tool_result is_error; the builtin agent prefixes the text
        return text if self.anthropic else ERROR_PREFIX + text

    def next(self, step: int, steps: int) -> Action:
        rng, p = self.rng, self.profile
        if (
            self.last is not None
            and self.last.tool in ("Read", "Grep", "read_file", "shell")
            and "pytest" not in json.dumps(self.last.arguments)
            and rng.random() < p.repeat_rate
        ):
            return self.last  # the same call again, verbatim
        progress = step / max(steps - 1, 1)
        if progress < 0.2:
            kind = rng.choice(("search", "search", "read"))
        elif progress < 0.5:
            kind = rng.choice(("read", "read", "search", "test"))
        elif step == steps - 1:
            kind = "test"
        else:
            kind = rng.choice(("edit", "edit", "read", "test", "write"))
        action = self._action(kind)
        self.last = action
        return action

    def _action(self, kind: str) -> Action:
        rng, p = self.rng, self.profile
        path = rng.choice(self.files)
        if kind in ("edit", "write") and path not in self.read and rng.random() >= p.blind_edit_rate:
            kind = "read"  # a careful model reads first
        failed = kind != "test" and rng.random() < p.error_rate
        if kind == "search":
            word = rng.choice(_WORDS)
            if self.anthropic:
                tool, arguments = "Grep", {"pattern": f"def {word}_", "path": "src"}
            else:
                tool, arguments = "shell", {"command": f"grep -rn 'def {word}_' src"}
            hits = "\n".join(
                f"{rng.choice(self.files)}:{rng.randrange(400)}:{line}"
                for line in _lines(rng, self._size(150, 1600)).splitlines()
            )
            return Action(tool, arguments, self._error(kind) if failed else hits, failed and self.anthropic)
        if kind == "read":
            self.read.add(path)
            tool, arguments = (
                ("Read", {"file_path": self._path(path)}) if self.anthropic else ("read_file", {"path": path})
            )
            if rng.random() < p.invalid_args_rate:
                arguments = {"filename": self._path(path)}  # not in the tool's schema
            body = "\n".join(
                f"{n:>6}\t{line}" for n, line in enumerate(_lines(rng, self._size(800, 6000)).splitlines(), 1)
            )
            return Action(tool, arguments, self._error(kind) if failed else body, failed and self.anthropic)
        if kind == "test":
            code = 0 if rng.random() < p.skill else 1
            log = _lines(rng, self._size(300, 2500))
            summary = (
                f"{rng.randint(5, 40)} passed in {rng.uniform(0.3, 9):.2f}s"
                if code == 0
                else f"{rng.randint(1, 6)} failed, {rng.randint(3, 30)} passed"
            )
            tool, key = ("Bash", "command") if self.anthropic else ("shell", "command")
            return Action(tool, {key: TEST_COMMAND}, f"{log}\n{summary}\nexit code: {code}")
        if kind == "edit":
            old = _lines(rng, 80)
            new = _lines(rng, self._size(60, 500))
            tool, arguments = (
                ("Edit", {"file_path": self._path(path), "old_string": old, "new_string": new})
                if self.anthropic
                else ("edit_file", {"path": path, "old": old, "new": new})
            )
            ok = f"The file {self._path(path)} has been updated."
            return Action(tool, arguments, self._error(kind) if failed else ok, failed and self.anthropic)
        content = _lines(rng, self._size(400, 3000))
        tool, arguments = (
            ("Write", {"file_path": self._path(path), "content": content})
            if self.anthropic
            else ("write_file", {"path": path, "content": content})
        )
        return Action(tool, arguments, f"File created successfully at: {self._path(path)}")


def run_id_for(profile: ModelProfile, instance_id: str, rng: random.Random) -> str:
    """A run id as make_run_id builds it, with the nonce from the seeded generator."""
    return f"{profile.key}~{instance_id}~0~{rng.getrandbits(32):08x}"


def run_records(profile: ModelProfile, task: dict, seed: int) -> tuple[list[dict], dict]:
    """The recorded calls of one run of `task` by `profile`, and its `runs` row."""
    rng = random.Random(f"{seed}:{profile.name}:{task['instance_id']}")
    run_id = run_id_for(profile, task["instance_id"], rng)
    steps = max(3, min(profile.max_steps, round(rng.gauss(profile.mean_steps, profile.mean_steps * 0.35))))
    writer, plan = _RunWriter(profile, task, run_id, rng), _Plan(profile, rng)
    if writer.anthropic:
        writer.title_call()
    for step in range(steps):
        writer.step(
            plan.next(step, steps),
            f"Step {step + 1}: "
            + rng.choice(
                ("let me look at the code.", "checking how this is used.", "now the fix.", "running the tests.")
            ),
        )
    resolved = rng.random() < profile.skill
    final = (
        f"Done: changed {', '.join(sorted(plan.read)[:3]) or 'nothing'}; the tests "
        f"{'pass' if resolved else 'still fail'}."
    )
    if writer.anthropic:
        writer.step(None, final)
    else:
        writer.step(Action("finish", {"summary": final}, "finished"), "")
    total = rng.randint(5, 40)
    failed = 0 if resolved else rng.randint(1, total)
    row = {name: None for name in RUNS.schema.names} | {
        "run_id": run_id,
        "attempt": 0,
        "model_name": profile.name,
        "route": profile.route,
        "scaffold": profile.scaffold,
        "scaffold_version": "bench",
        "backend": "docker",
        "started_at": writer.records[0]["started_at"],
        "run_seconds": writer.records[-1]["ended_at"] - writer.records[0]["started_at"],
        "stop_reason": "end_turn" if writer.anthropic else "finished",
        "agent_exit_code": 0,
        "agent_stderr_tail": "",
        "final_answer": final,
        "timed_out": False,
        "test_command": TEST_COMMAND,
        "test_exit_code": 0 if resolved else 1,
        "tests_passed": total - failed,
        "tests_failed": failed,
        "tests_total": total,
        "test_output_tail": f"{total - failed} passed, {failed} failed",
        "resolved": resolved,
        "diff": "".join(
            f"--- a/{p}\n+++ b/{p}\n@@ -1,3 +1,3 @@\n-{_lines(rng, 60)}\n+{_lines(rng, 60)}\n"
            for p in sorted(plan.read)[:3]
        ),
    }
    return writer.records, row


def load_partition(store: Store, scratch: Path, profile: ModelProfile, task: dict, seed: int) -> int:
    """Write one run's recordings as the proxy would, load them with the real load code
    (load_runs), store its `runs` row; return the number of calls. The JSONL is removed
    afterwards: the store holds everything downstream needs."""
    records, row = run_records(profile, task, seed)
    path = scratch / f"{row['run_id']}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    partition = {"model": profile.key, "instance": task["instance_id"]}
    try:
        loaded = load_runs(store, [path], profile.key, task["instance_id"])
    finally:
        path.unlink()
    store.write(RUNS, pa.Table.from_pylist([row], schema=RUNS.schema), partition)
    return loaded.calls


# -- judge verdicts -------------------------------------------------------------------------
def cache_scripted_verdicts(
    cache, conversations: list[dict], task: dict, outcomes: dict, config, filled_by: str
) -> int:
    """Cache the demo's scripted judge's verdicts for one partition's judge requests, keyed as
    the Judge keys them: the function the scripted upstream runs, called without HTTP. Returns
    the number of requests; a Judge over the partition then finds every one cached."""
    from trajhub_assets.rewards.judge import JudgeResult, cache_entry, cache_key, plan_partition, read_answer
    from trajhub_assets.scaffolds.baselines import judge_answer

    requests = [r for plan in plan_partition(conversations, task, outcomes, config) for r in plan.requests]
    for request in requests:
        body = {"model": config.model, "messages": list(request.messages), "response_format": request.response_format()}
        verdicts, problems = read_answer(json.dumps(judge_answer(body)), request)
        entry = cache_entry(config, request, JudgeResult(verdicts, problems, attempts=1))
        cache.put(cache_key(config.model, config.prompt_version, request.input_hash), entry | {"filled_by": filled_by})
    return len(requests)
