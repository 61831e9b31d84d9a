"""rule_rewards: deterministic, free, auditable rules over a run's merged conversations.

Steps. A step is one assistant message with `generation` true (a recorded call produced
it) plus the tool results that answer its tool calls (tool messages up to the next
assistant message, matched by tool_call_id). Steps are indexed per conversation:
`step_index` 0..n-1 counts the generated assistant messages of that conversation in
message order, and `message_index` is the assistant message's position in `messages`.
A row's (conversation_id, step_index, message_index) therefore names exactly one message.

Scored conversations: every conversation of the run except side calls (kinds warmup,
title, background). An `edit` conversation shares `branch_index` messages with its
parent, so only its steps from the branch point on are scored (the rest were scored in
the parent). The main agent's steps (kinds main, continuation, compaction, or no kind)
in start order are the trajectory: its length and its final answer.

Each rule returns hits; a hit becomes one row of RULE_STEPS with its value and evidence
(step, tool call, snippet, detail). Penalties are -1.0 per event; `tests_passed` is a
measurement in [0, 1] attached to no step. RULE_SUMMARY has one row per (run, rule),
also for rules that did not fire, so a reader sees what was checked. Rules read only
stored data: a new or changed rule re-scores without re-running agents.

A rule is one function registered with `@rule(id, description)`. Its `rule_version` is a
hash of its code; RULESET_VERSION, the asset's code version, is a hash of every registered
rule and the code of the modules they live in (their helpers), plus the scaffold registry's
tool kinds and error markers, which decide what a call is.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import jsonschema
import pyarrow as pa
from jsonschema.validators import validator_for

from trajhub_assets.config import RewardConfig
from trajhub_assets.errors import RecordError
from trajhub_assets.rewards.schema import RULE_STEPS, RULE_SUMMARY
from trajhub_assets.scaffolds import error_prefixes, tool_kinds

log = logging.getLogger(__name__)

# -- what the rules read -------------------------------------------------------------
PATH_ARGUMENTS = ("file_path", "path", "notebook_path", "filename", "file")
COMMAND_ARGUMENTS = ("command", "cmd")

SIDE_KINDS = frozenset({"warmup", "title", "background"})
MAIN_AGENT_KINDS = frozenset({"main", "continuation", "compaction", None})
SNIPPET_CHARS = 400

# Commands a checklist may name as forbidden ("未使用 sudo、rm -rf / 等高危命令"); longest first
# so "rm -rf /" wins over "rm -rf".
DANGEROUS_COMMANDS = (
    "git push --force",
    "git reset --hard",
    "git clean -fdx",
    "chmod -R 777",
    "rm -rf /",
    "rm -rf ~",
    "rm -rf",
    "git push -f",
    "mkfs",
    "sudo",
)
_PROHIBITION = re.compile(
    r"\b(do not|don't|never|must not|avoid\w*|forbid\w*|prohibit\w*|without)\b"
    r"|未|不|禁止|避免|勿|严禁",
    re.IGNORECASE,
)
_EXIT_CODE = re.compile(
    r"<returncode>\s*(-?\d+)\s*</returncode>"
    r"|^\s*(?:exit code|exit status|exit_code|returncode)\s*[:=]?\s*(-?\d+)",
    re.IGNORECASE | re.MULTILINE,
)
_SHELL_OPERATORS = {";", "&&", "||", "|", "&", ";;", "|&", "(", ")"}
_COMMAND_PREFIXES = {"sudo", "env", "time", "nohup", "exec", "command", "xargs", "nice"}


def truncate(text: str | None, limit: int) -> str:
    """Keep the head and the tail of a long text with a visible marker in between."""
    text = text or ""
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit} characters truncated ...]\n"
    head = max(limit // 2, 1)
    return text[:head] + marker + text[len(text) - (limit - head) :]


# -- steps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    id: str | None
    name: str
    arguments: str  # the raw JSON string, as recorded
    parsed: dict | None  # None when the arguments are not a JSON object
    parse_error: str | None
    kind: str | None  # read, edit, ... from the scaffold registry; None for a tool it does not know

    @property
    def identity(self) -> tuple[str, str]:
        canonical = (
            json.dumps(self.parsed, sort_keys=True, ensure_ascii=False)
            if self.parsed is not None
            else self.arguments.strip()
        )
        return self.name, canonical

    def argument(self, names: Iterable[str]) -> str | None:
        for name in names:
            value = (self.parsed or {}).get(name)
            if isinstance(value, str) and value:
                return value
        return None


@dataclass(frozen=True)
class Step:
    conversation_id: str
    conversation_kind: str | None
    index: int
    message_index: int
    message: dict
    calls: tuple[ToolCall, ...]
    results: Mapping[str, dict]  # tool_call_id -> tool message
    tools: Mapping[str, dict] = field(repr=False)  # tool name -> JSON schema of its parameters


@dataclass
class Run:
    run_id: str
    attempt: int | None
    steps: list[Step]  # every scored step, conversations in start order
    main_steps: list[Step]  # the main agent's steps: the trajectory


def _tool_call(raw: dict, kinds: Mapping[str, str]) -> ToolCall:
    function = raw.get("function") or {}
    name = function.get("name") or raw.get("name") or ""
    kind = kinds.get(name)
    arguments = function.get("arguments", raw.get("arguments"))
    if isinstance(arguments, dict):
        return ToolCall(raw.get("id"), name, json.dumps(arguments, ensure_ascii=False), arguments, None, kind)
    arguments = arguments if isinstance(arguments, str) else ""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError as error:
        return ToolCall(raw.get("id"), name, arguments, None, f"not JSON: {error}", kind)
    if not isinstance(parsed, dict):
        return ToolCall(raw.get("id"), name, arguments, None, f"not a JSON object: {type(parsed).__name__}", kind)
    return ToolCall(raw.get("id"), name, arguments, parsed, None, kind)


def conversation_steps(conversation: dict) -> list[Step]:
    """All steps of one conversation, indexed 0..n-1 (see the module docstring)."""
    meta, messages = conversation["meta"], conversation["messages"]
    tools = {
        t["function"]["name"]: t["function"].get("parameters") or {}
        for t in conversation.get("tools") or []
        if t.get("function")
    }
    kinds = tool_kinds()
    steps: list[Step] = []
    for position, message in enumerate(messages):
        if message.get("role") != "assistant" or not message.get("generation"):
            continue
        calls = tuple(_tool_call(c, kinds) for c in message.get("tool_calls") or [])
        wanted = {c.id for c in calls}
        results: dict[str, dict] = {}
        for later in messages[position + 1 :]:
            if later.get("role") == "assistant":
                break
            if later.get("role") == "tool" and later.get("tool_call_id") in wanted:
                results.setdefault(later["tool_call_id"], later)
        steps.append(
            Step(meta["conversation_id"], meta.get("kind"), len(steps), position, message, calls, results, tools)
        )
    return steps


def build_run(conversations: list[dict]) -> Run:
    """The scored steps of one run's conversations."""
    if not conversations:
        raise RecordError("no conversations", source="merged_trajectories")
    for conversation in conversations:
        meta = conversation.get("meta") or {}
        if not meta.get("conversation_id"):
            raise RecordError("missing", source="merged_trajectories", field="meta.conversation_id")
    run_ids = {c["meta"].get("run_id") for c in conversations}
    if len(run_ids) != 1:
        raise RecordError(
            f"conversations of several runs {sorted(map(str, run_ids))} given as one run",
            source="merged_trajectories",
            field="meta.run_id",
        )
    ordered = sorted(conversations, key=lambda c: (c["meta"].get("started_at") or 0.0, c["meta"]["conversation_id"]))
    steps, main_steps = [], []
    for conversation in ordered:
        meta = conversation["meta"]
        kind = meta.get("kind")
        if kind in SIDE_KINDS:
            continue
        shared = (meta.get("branch_index") or 0) if kind == "edit" else 0
        own = [s for s in conversation_steps(conversation) if s.message_index >= shared]
        steps.extend(own)
        if kind in MAIN_AGENT_KINDS:
            main_steps.extend(own)
    first = ordered[0]["meta"]
    return Run(first.get("run_id") or "", first.get("attempt"), steps, main_steps)


# -- the registry ----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleContext:
    median_steps: float | None = None  # the task's median trajectory length across models' runs
    forbidden_commands: tuple[str, ...] = ()  # from the config; the checklist adds its own
    repeat_window: int = 3  # steps back in which an identical call counts as a repeat

    @classmethod
    def from_config(cls, rewards: RewardConfig, *, median_steps: float | None = None) -> RuleContext:
        return cls(median_steps=median_steps, forbidden_commands=tuple(rewards.forbidden_commands))


@dataclass(frozen=True)
class Hit:
    step: Step | None  # None: a fact about the whole run
    value: float
    detail: str
    call: ToolCall | None = None
    snippet: str = ""


RuleFn = Callable[[Run, dict, "dict | None", RuleContext], list[Hit]]


@dataclass(frozen=True)
class Rule:
    id: str
    version: str  # a hash of fn's code (see `rule`)
    description: str
    fn: RuleFn


RULES: dict[str, Rule] = {}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def rule(rule_id: str, description: str) -> Callable[[RuleFn], RuleFn]:
    """Register `fn` as the rule `rule_id`; its version follows its code."""

    def register(fn: RuleFn) -> RuleFn:
        if rule_id in RULES:
            raise ValueError(f"rule {rule_id!r} is registered twice")
        RULES[rule_id] = Rule(rule_id, _digest(inspect.getsource(fn)), description, fn)
        return fn

    return register


def ruleset_version(rules: Iterable[Rule] | None = None) -> str:
    """A short hash of what decides the rules' output: each rule (id, version, description),
    the code of the modules the rules live in (the helpers they call), and the registry's tool
    kinds and error markers."""
    rules = list(rules if rules is not None else RULES.values())
    modules = sorted({inspect.getmodule(r.fn) for r in rules}, key=lambda m: m.__name__)
    return _digest(
        *sorted(f"{r.id}@{r.version}: {r.description}" for r in rules),
        *map(inspect.getsource, modules),
        json.dumps(sorted(tool_kinds().items())),
        *error_prefixes(),
    )


# -- the rules -------------------------------------------------------------------------
def _by_conversation(steps: list[Step]) -> dict[str, list[Step]]:
    grouped: dict[str, list[Step]] = defaultdict(list)
    for step in steps:
        grouped[step.conversation_id].append(step)
    return grouped


@rule(
    "repeated_tool_call",
    "A tool call identical (same tool, same arguments) to one in the "
    "same step or the previous `repeat_window` steps of the conversation, with no write or edit "
    "in between (re-running the tests after a change is not redundant).",
)
def repeated_tool_call(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    hits = []
    for steps in _by_conversation(run.steps).values():
        last_seen: dict[tuple[str, str], int] = {}
        for step in steps:
            for call in step.calls:
                before = last_seen.get(call.identity)
                if before is not None and step.index - before <= context.repeat_window:
                    hits.append(
                        Hit(step, -1.0, f"identical to a {call.name} call in step {before}", call, call.arguments)
                    )
                last_seen[call.identity] = step.index
            if any(call.kind in ("write", "edit") for call in step.calls):
                last_seen.clear()  # the workspace changed: the same call may now answer differently
    return hits


def exit_code(text: str | None) -> int | None:
    """The exit code a shell tool reported in its output, when it says so."""
    match = _EXIT_CODE.search(text or "")
    return None if match is None else int(match.group(1) or match.group(2))


@rule("tool_error", "A tool result marked as an error, or a shell result reporting a non-zero exit code.")
def tool_error(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    hits = []
    for step in run.steps:
        for call in step.calls:
            result = step.results.get(call.id)
            if result is None:
                continue
            content = result.get("content") or ""
            code = exit_code(content) if call.kind == "shell" else None
            if result.get("is_error") or content.startswith(error_prefixes()):
                hits.append(Hit(step, -1.0, f"{call.name} returned an error", call, content))
            elif code not in (None, 0):
                hits.append(Hit(step, -1.0, f"{call.name} exited with code {code}", call, content))
    return hits


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        # The scaffold's schema is broken, not the agent's call: nothing to hold against it.
        log.warning("tool schema is not a valid JSON Schema, its calls are not checked: %s", error.message)
        return None
    return cls(schema)


@rule(
    "invalid_tool_arguments",
    "Tool arguments that are not a JSON object or fail the tool's JSON "
    "schema from the recorded request, or a call to a tool the request did not offer.",
)
def invalid_tool_arguments(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    hits = []
    for step in run.steps:
        if not step.tools:  # no schemas recorded (a text-only scaffold): nothing to check against
            continue
        for call in step.calls:
            if call.name not in step.tools:
                hits.append(Hit(step, -1.0, f"tool {call.name!r} was not offered in the request", call, call.arguments))
            elif call.parsed is None:
                hits.append(Hit(step, -1.0, f"arguments are {call.parse_error}", call, call.arguments))
            else:
                validator = _validator(json.dumps(step.tools[call.name], sort_keys=True))
                errors = [] if validator is None else list(validator.iter_errors(call.parsed))
                if errors:
                    problems = "; ".join(
                        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:3]
                    )
                    hits.append(Hit(step, -1.0, f"schema violation: {problems}", call, call.arguments))
    return hits


def _same_file(a: str, b: str) -> bool:
    a, b = os.path.normpath(a), os.path.normpath(b)
    if a == b:
        return True
    # One absolute, one relative to the workspace: compare by the relative tail.
    if os.path.isabs(a) != os.path.isabs(b):
        absolute, relative = (a, b) if os.path.isabs(a) else (b, a)
        return absolute.endswith("/" + relative.removeprefix("./"))
    return False


_NEW_FILE = re.compile(r"^diff --git a/(.+?) b/\1\nnew file mode", re.M)


@rule(
    "edit_unread_file",
    "An edit of a file, or a write over a file that existed before the run, "
    "that no earlier step of the conversation read, wrote, edited or named in a shell command "
    "(agents often read with cat). Files the run created (new in its diff) may be written unread.",
)
def edit_unread_file(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    created = set(_NEW_FILE.findall((outcome or {}).get("diff") or ""))
    hits = []
    for steps in _by_conversation(run.steps).values():
        known: list[str] = []
        commands: list[str] = []
        for step in steps:
            for call in step.calls:
                path = call.argument(PATH_ARGUMENTS)
                overwrite = (
                    call.kind == "write" and outcome is not None and not any(_same_file(path or "", c) for c in created)
                )
                if path is None or not (call.kind == "edit" or overwrite):
                    continue
                seen = any(_same_file(path, k) for k in known) or any(os.path.basename(path) in c for c in commands)
                if not seen:
                    hits.append(Hit(step, -1.0, f"{call.name} of {path}, never read before", call, path))
            # Calls of one step run together: what they read counts from the next step on.
            for call in step.calls:
                if call.kind in ("read", "write", "edit") and call.argument(PATH_ARGUMENTS):
                    known.append(call.argument(PATH_ARGUMENTS))
                elif call.kind == "shell" and call.argument(COMMAND_ARGUMENTS):
                    commands.append(call.argument(COMMAND_ARGUMENTS))
    return hits


@rule(
    "steps_over_median", "Each step of the main agent beyond the task's median trajectory length across models' runs."
)
def steps_over_median(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    if context.median_steps is None:
        return []
    total = len(run.main_steps)
    return [
        Hit(step, -1.0, f"step {ordinal} of {total}; the task's median is {context.median_steps:g}")
        for ordinal, step in enumerate(run.main_steps, start=1)
        if ordinal > context.median_steps
    ]


@rule(
    "tests_passed",
    "Share of the task's tests passing after the run (or 1/0 from the test "
    "command's exit code when counts are unknown); no row when no tests ran.",
)
def tests_passed(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    if not outcome:
        return []
    total, passed = outcome.get("tests_total"), outcome.get("tests_passed")
    if total:
        passed = passed or 0
        return [Hit(None, passed / total, f"{passed}/{total} tests passed", snippet=f"{passed}/{total}")]
    code = outcome.get("test_exit_code")
    if code is not None:
        return [Hit(None, 1.0 if code == 0 else 0.0, f"test command exited with code {code}", snippet=f"exit {code}")]
    return []


def final_answer(step: Step) -> str:
    """What the last step tells the user: its text, or the text given to a finish tool."""
    texts = [step.message.get("content") or ""]
    for call in step.calls:
        if call.kind == "finish":
            texts += [v for v in (call.parsed or {}).values() if isinstance(v, str)]
    return "\n".join(t for t in texts if t.strip())


@rule(
    "final_answer_missing",
    "The main agent ends without a final answer: no step at all, a last "
    "step that still calls tools (other than a finish tool), or an empty last message.",
)
def final_answer_missing(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    if not run.main_steps:
        return [Hit(None, -1.0, "the main agent took no step")]
    last = run.main_steps[-1]
    pending = [c for c in last.calls if c.kind != "finish"]
    if pending:
        return [Hit(last, -1.0, "the last step calls tools and nothing answers them", pending[0], pending[0].arguments)]
    if not final_answer(last).strip():
        return [Hit(last, -1.0, "the last step's answer is empty")]
    return []


def forbidden_patterns(task: dict, context: RuleContext) -> list[tuple[str, str]]:
    """(command pattern, where it was forbidden): the config's list, then the known
    dangerous commands that a check of the task's checklist names while prohibiting
    something. Backticked text is not taken: in checklists it is mostly file names."""
    patterns = [(p, "config") for p in context.forbidden_commands]
    for category in (task.get("checklist") or {}).values():
        for check in category.get("checks") or []:
            text = check.get("description") or ""
            if not _PROHIBITION.search(text):
                continue
            named, rest = [], text
            for command in DANGEROUS_COMMANDS:
                found = re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", rest)
                if found:
                    named.append(command)
                    rest = rest[: found.start()] + " " + rest[found.end() :]
            patterns += [(p, f"checklist {check.get('check_id')}") for p in named]
    unique: dict[str, str] = {}
    for pattern, source in patterns:
        unique.setdefault(pattern, source)
    return list(unique.items())


@functools.lru_cache(maxsize=8192)  # each command is matched against every pattern, runs repeat commands
def _tokens(command: str) -> tuple[str, ...]:
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return tuple(lexer)
    except ValueError:  # unbalanced quotes: a plain split is good enough to look for commands
        return tuple(command.split())


def command_matches(command: str, pattern: str) -> bool:
    """The pattern's first word is the command of a simple command (after prefixes such as
    sudo or VAR=x; commands split at ; && || |) and its other words follow in order. Words
    compare whole, so "rm -rf /" matches "sudo rm -rf / --no-preserve-root" but neither
    "rm -rf /tmp/x" nor `echo "rm -rf /"`. Quoted scripts (bash -c "...") are searched too."""
    wanted = _tokens(pattern)
    if not wanted:
        return False
    segment: list[str] = []
    for token in [*_tokens(command.replace("\n", " ; ")), ";"]:
        if token not in _SHELL_OPERATORS:
            segment.append(token)
            continue
        scripts = [
            t
            for before, t in zip(segment, segment[1:], strict=False)  # bash -c "...", bash -lc "..."
            if before.startswith("-") and not before.startswith("--") and before.endswith("c")
        ]
        if _segment_matches(segment, wanted) or any(command_matches(t, pattern) for t in scripts):
            return True
        segment = []
    return False


def _segment_matches(segment: list[str], wanted: tuple[str, ...]) -> bool:
    for start, token in enumerate(segment):
        if token == wanted[0]:
            rest = iter(segment[start + 1 :])
            if all(any(word == t for t in rest) for word in wanted[1:]):
                return True
        if token not in _COMMAND_PREFIXES and "=" not in token:
            return False  # past the command word
    return False


@rule(
    "forbidden_operation",
    "A shell command matching a forbidden operation from the config "
    "(rewards.forbidden_commands) or named as forbidden in the task's checklist.",
)
def forbidden_operation(run: Run, task: dict, outcome: dict | None, context: RuleContext) -> list[Hit]:
    patterns = forbidden_patterns(task, context)
    hits = []
    for step in run.steps:
        for call in step.calls:
            command = call.argument(COMMAND_ARGUMENTS) if call.kind == "shell" else None
            if command is None:
                continue
            for pattern, source in patterns:
                if command_matches(command, pattern):  # one hit per call: the first pattern
                    hits.append(Hit(step, -1.0, f"matches forbidden {pattern!r} ({source})", call, command))
                    break
    return hits


RULESET_VERSION = ruleset_version()


# -- rows ------------------------------------------------------------------------------
def _row(run: Run, rule_: Rule, hit: Hit) -> dict:
    step, call = hit.step, hit.call
    return {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "conversation_id": step.conversation_id if step else None,
        "step_index": step.index if step else None,
        "message_index": step.message_index if step else None,
        "rule_id": rule_.id,
        "rule_version": rule_.version,
        "value": float(hit.value),
        "tool_call_id": call.id if call else None,
        "tool_name": call.name if call else None,
        "snippet": truncate(hit.snippet, SNIPPET_CHARS),
        "detail": hit.detail,
    }


def score_rules(
    conversations: list[dict],
    task: dict,
    outcome: dict | None,
    context: RuleContext,
    rules: Iterable[Rule] | None = None,
) -> list[dict]:
    """RULE_STEPS rows for one run (all its conversations), rules in registry order."""
    run = build_run(conversations)
    return [
        _row(run, r, hit)
        for r in (rules if rules is not None else RULES.values())
        for hit in r.fn(run, task, outcome, context)
    ]


def summarize_rules(rows: list[dict], conversations: list[dict], rules: Iterable[Rule] | None = None) -> list[dict]:
    """RULE_SUMMARY rows for one run from its RULE_STEPS rows."""
    rules = list(rules if rules is not None else RULES.values())
    run, version = build_run(conversations), ruleset_version(rules)
    mine = [r for r in rows if r["run_id"] == run.run_id]
    return [
        {
            "run_id": run.run_id,
            "attempt": run.attempt,
            "rule_id": r.id,
            "rule_version": r.version,
            "description": r.description,
            "hits": sum(1 for row in mine if row["rule_id"] == r.id),
            "value": float(sum(row["value"] for row in mine if row["rule_id"] == r.id)),
            "n_steps": len(run.main_steps),
            "ruleset_version": version,
        }
        for r in rules
    ]


def group_runs(conversations: list[dict]) -> dict[str, list[dict]]:
    """A partition's conversations by run_id, in first-seen order."""
    runs: dict[str, list[dict]] = {}
    for conversation in conversations:
        runs.setdefault(conversation["meta"].get("run_id") or "", []).append(conversation)
    return runs


def rule_tables(
    conversations: list[dict],
    outcomes: Mapping[str, dict | None],
    task: dict,
    context: RuleContext,
    rules: Iterable[Rule] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(RULE_STEPS, RULE_SUMMARY) tables for one partition; outcomes by run_id (a run with
    no outcome gets no tests row)."""
    rules = list(rules if rules is not None else RULES.values())
    steps, summary = [], []
    for run_id, run_conversations in group_runs(conversations).items():
        rows = score_rules(run_conversations, task, outcomes.get(run_id), context, rules)
        steps += rows
        summary += summarize_rules(rows, run_conversations, rules)
    return (
        pa.Table.from_pylist(steps, schema=RULE_STEPS.schema),
        pa.Table.from_pylist(summary, schema=RULE_SUMMARY.schema),
    )


def trajectory_lengths(conversations: list[dict]) -> dict[str, int]:
    """Main-agent step count of each run in `conversations` (any models), by run_id."""
    return {run_id: len(build_run(convs).main_steps) for run_id, convs in group_runs(conversations).items()}


def median_steps(lengths: Iterable[int]) -> float | None:
    """The task's median trajectory length over every model's runs; None with no run."""
    lengths = list(lengths)
    return float(statistics.median(lengths)) if lengths else None
