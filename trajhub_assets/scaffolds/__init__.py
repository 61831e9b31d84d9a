"""Scaffolds: the agents trajhub runs, each behind the same three methods.

    scaffold = make_scaffold("claudecode")
    scaffold.install()  # host side, idempotent
    agent_run = scaffold.run(sandbox, task, endpoint, model_route, sampling, timeout)

A scaffold runs the task's user queries as successive turns of one conversation, with its
client pointed at the recording proxy and the run id attached to every request
(`x-trajhub-run: <run_id>`). It never knows which sandbox backend it runs in, beyond
`clients.place()` skipping the copy for the local one.

Each scaffold is one module plus one entry of SCAFFOLDS below: its name, the import path of
its class, the client it pins, its tool names by kind and its tool-error marker. This module
imports no scaffold (nor openai or the sandboxes), so the config and the rules read the
registry without loading any agent.

A failed agent is data: `AgentRun` with its exit code and the tail of its stderr (and
the error the client printed), logged at ERROR. A scaffold that cannot start at all (a
client that does not install, a task without queries) raises.
"""

from __future__ import annotations

import abc
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from trajhub_assets.errors import ConfigError, RecordError
from trajhub_assets.recording.run_id import RUN_HEADER
from trajhub_assets.scaffolds import clients


@dataclass(frozen=True)
class Endpoint:
    base_url_host: str  # the proxy's root URL (no /v1) as seen from the host
    base_url_sandbox: str  # the same proxy as seen from inside the sandbox
    api_key: str = field(repr=False)
    run_id: str


@dataclass(frozen=True)
class AgentRun:
    exit_code: int | None  # None: the agent was stopped before it exited (timeout)
    stop_reason: str
    stderr_tail: str
    final_answer: str
    version: str
    timed_out: bool


def user_queries(task: dict) -> list[str]:
    queries = task.get("user_query")
    if isinstance(queries, str):
        queries = [queries]
    if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise RecordError(
            "needs a non-empty list of non-empty strings",
            source=task.get("source", "task record"),
            record_id=task.get("instance_id"),
            field="user_query",
        )
    return queries


class Scaffold(abc.ABC):
    def __init__(self, entry: ScaffoldEntry):  # made by make_scaffold: name and pin are the entry's
        self.name = entry.name
        self.client = entry.client

    @abc.abstractmethod
    def install(self) -> None:
        """Make the client available on the host (idempotent)."""

    @abc.abstractmethod
    def version(self) -> str:
        """The client's own version string, recorded with every run."""

    @abc.abstractmethod
    def run(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict, timeout: float
    ) -> AgentRun:
        """Run every user query of `task` in `sandbox`; `timeout` bounds the whole agent."""


@dataclass
class Turn:
    """What a CLI's output says about one turn."""

    final_answer: str = ""
    stop_reason: str = ""
    session_id: str | None = None
    error: str = ""  # an error the client reported in its output (e.g. an API error)


def json_lines(stdout: str):
    """The JSON objects of a CLI's line-delimited output; other lines are skipped."""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. a line cut by the sandbox's output cap


# -- the registry: one entry per scaffold ---------------------------------------------------
TOOL_KINDS = ("read", "edit", "write", "shell", "search", "finish")  # what the rules tell apart


@dataclass(frozen=True)
class ScaffoldEntry:
    name: str
    scaffold: str  # "module:Class", imported only by make_scaffold
    client: clients.Client | None  # the pinned client it installs; None: nothing outside this package
    tool_kinds: Mapping[str, str]  # its tool names -> one of TOOL_KINDS
    error_prefix: str | None = None  # how its tool results say "failed" when the wire format cannot


def _kinds(**names: tuple[str, ...]) -> dict[str, str]:
    return {tool: kind for kind, tools in names.items() for tool in tools}


BUILTIN_ERROR_PREFIX = "ERROR: "  # the OpenAI chat format has no error flag on a tool result

SCAFFOLDS: dict[str, ScaffoldEntry] = {
    entry.name: entry
    for entry in (
        ScaffoldEntry(
            "claudecode",
            "trajhub_assets.scaffolds.claudecode:ClaudeCode",
            clients.Client(
                "claude-code", "npm", f"@anthropic-ai/claude-code-linux-{clients.ARCH}", "2.1.330", "claude"
            ),
            _kinds(
                read=("Read", "NotebookRead"),
                edit=("Edit", "MultiEdit", "NotebookEdit"),
                write=("Write",),
                shell=("Bash",),
                search=("Grep", "Glob", "LS"),
            ),
        ),
        ScaffoldEntry(
            "kilo-dev",
            "trajhub_assets.scaffolds.kilo:Kilo",
            clients.Client("kilo", "npm", f"@kilocode/cli-linux-{clients.ARCH}", "7.7.9", "bin/kilo"),
            _kinds(shell=("bash",)),
        ),
        ScaffoldEntry(
            "droid",
            "trajhub_assets.scaffolds.droid:Droid",
            clients.Client("droid", "npm", f"@factory/cli-linux-{clients.ARCH}", "0.225.2", "bin/droid"),
            _kinds(
                read=("Read",),
                edit=("Edit", "MultiEdit"),
                write=("Create",),
                shell=("Execute",),
                search=("Grep", "Glob", "LS"),
            ),
        ),
        ScaffoldEntry(
            "mini-swe-agent",
            "trajhub_assets.scaffolds.mini_swe_agent:MiniSweAgent",
            # mini-swe-agent leaves litellm unpinned; pin it, with the `mcp` extra: litellm 1.106
            # imports mcp on every completion that has tools.
            clients.Client(
                "mini-swe-agent", "pip", "mini-swe-agent", "2.4.6", "bin/python", also=("litellm[mcp]==1.106.2",)
            ),
            _kinds(shell=("bash",)),
        ),
        ScaffoldEntry(
            "builtin",
            "trajhub_assets.scaffolds.builtin:Builtin",
            None,
            _kinds(
                read=("read_file",),
                edit=("edit_file",),
                write=("write_file",),
                shell=("shell",),
                search=("search",),
                finish=("finish",),
            ),
            error_prefix=BUILTIN_ERROR_PREFIX,
        ),
    )
}

# Tool names of agents trajhub imports trajectories of but does not run (Kilo Code and Cline
# in an editor, SWE-agent, Gemini CLI): the rules read imported runs too.
IMPORTED_TOOL_KINDS = _kinds(
    read=("view_file", "open_file"),
    edit=("apply_diff", "replace_in_file", "insert_content", "search_and_replace"),
    write=("write_to_file", "create_file"),
    shell=("execute_command", "run_shell_command"),
    search=("search_files", "list_files"),
    finish=("attempt_completion", "submit"),
)


def tool_kinds() -> dict[str, str]:
    """Every known tool name -> its kind, from the entries and IMPORTED_TOOL_KINDS."""
    kinds: dict[str, str] = {}
    owners = [(e.name, e.tool_kinds) for e in SCAFFOLDS.values()] + [("imported agents", IMPORTED_TOOL_KINDS)]
    for owner, names in owners:
        for tool, kind in names.items():
            if kind not in TOOL_KINDS:
                raise ConfigError(f"scaffold {owner}: tool {tool!r} has kind {kind!r}; kinds: {', '.join(TOOL_KINDS)}")
            if kinds.setdefault(tool, kind) != kind:  # the rules read calls by name, whoever made them
                raise ConfigError(
                    f"scaffold {owner}: tool {tool!r} is {kind!r} here but {kinds[tool]!r} in another entry"
                )
    return kinds


def error_prefixes() -> tuple[str, ...]:
    return tuple(e.error_prefix for e in SCAFFOLDS.values() if e.error_prefix)


def pinned_clients() -> dict[str, clients.Client]:
    """The clients the scaffolds install, by client name (scripts/install_clients.sh)."""
    return {e.client.name: e.client for e in SCAFFOLDS.values() if e.client is not None}


def install_clients(names: list[str]) -> list[str]:
    """Install the named pinned clients (default: all); "name: version (path)" of each
    (scripts/install_clients.sh)."""
    known = pinned_clients()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown client {unknown[0]!r}; known: {', '.join(known)}")
    lines = []
    for name in names or known:
        clients.install(known[name])
        lines.append(f"{name}: {clients.version(known[name])} ({known[name].path})")
    return lines


def scaffold_entry(name: str) -> ScaffoldEntry:
    if name not in SCAFFOLDS:
        raise ConfigError(f"unknown scaffold {name!r}; known: {', '.join(SCAFFOLDS)}")
    return SCAFFOLDS[name]


def make_scaffold(name: str) -> Scaffold:
    entry = scaffold_entry(name)
    module, _, cls = entry.scaffold.partition(":")
    return getattr(importlib.import_module(module), cls)(entry)


__all__ = [
    "BUILTIN_ERROR_PREFIX",
    "RUN_HEADER",
    "SCAFFOLDS",
    "TOOL_KINDS",
    "AgentRun",
    "Endpoint",
    "Scaffold",
    "ScaffoldEntry",
    "Turn",
    "error_prefixes",
    "json_lines",
    "make_scaffold",
    "pinned_clients",
    "scaffold_entry",
    "tool_kinds",
    "user_queries",
]
