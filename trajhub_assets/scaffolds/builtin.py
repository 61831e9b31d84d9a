"""The builtin agent: a small tool-calling loop over the OpenAI chat API.

The loop runs on the host and acts only through the sandbox (exec, read, write), so it
needs nothing installed in the task's image. Each user query of the task is one turn;
a turn ends when the model calls `finish` or answers without a tool call. Paths are
confined to the workspace; the sandbox confines the shell.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from openai import APIError, OpenAI

from trajhub_assets.recording.run_id import RUN_HEADER
from trajhub_assets.sandbox.base import SandboxTimeout
from trajhub_assets.scaffolds import BUILTIN_ERROR_PREFIX, AgentRun, Scaffold, clients, user_queries

log = logging.getLogger(__name__)
VERSION = "1"
# A failed call's result starts with this; the registry declares it, so the tool_error rule reads it.
ERROR_PREFIX = BUILTIN_ERROR_PREFIX

DEFAULT_SYSTEM_PROMPT = (
    "You are a software engineer working in the repository at {workspace}. Use the tools to "
    "inspect and change it. Read a file before you edit it, run the tests to check your work, "
    "and call `finish` with a short summary when the task is done."
)


def _tool(name: str, description: str, **properties: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "required": list(properties),
                "properties": {p: {"type": "string", "description": d} for p, d in properties.items()},
            },
        },
    }


TOOLS = [
    _tool("read_file", "Read a text file of the workspace.", path="path relative to the workspace"),
    _tool(
        "write_file",
        "Create or overwrite a file.",
        path="path relative to the workspace",
        content="the whole new content",
    ),
    _tool(
        "edit_file",
        "Replace one exact, unique occurrence of `old` with `new` in a file.",
        path="path relative to the workspace",
        old="text to replace, exactly once in the file",
        new="replacement text",
    ),
    _tool("shell", "Run a shell command at the workspace root.", command="the command"),
    _tool(
        "search",
        "Search file contents (grep -rn) below a directory.",
        pattern="a regular expression",
        path="directory relative to the workspace, e.g. .",
    ),
    _tool("finish", "End the task with a summary for the user.", summary="what was done"),
]


class ToolError(Exception):
    """The model's tool call could not be carried out; the message goes back to the model."""


@dataclass
class AgentLimits:
    max_steps: int = 40  # model calls over the whole run
    max_tokens: int = 400_000  # prompt + completion tokens over the whole run
    command_timeout: float = 120.0
    output_chars: int = 12_000  # per tool result; head and tail are kept


@dataclass
class AgentResult:
    stop_reason: str  # finished | no_tool_call | step_limit | token_limit
    steps: int = 0
    tokens: int = 0
    final_answer: str = ""
    messages: list[dict] = field(default_factory=list)


class Toolbox:
    """Carries out tool calls in a sandbox, confined to its workspace."""

    def __init__(self, sandbox, limits: AgentLimits):
        self.sandbox, self.limits = sandbox, limits

    def path(self, path: str) -> str:
        root = PurePosixPath(self.sandbox.workspace)
        parts = []
        for part in PurePosixPath(root, path).parts:  # an absolute path replaces root
            if part == "..":
                if parts:
                    parts.pop()
            else:
                parts.append(part)
        resolved = PurePosixPath(*parts)
        if resolved != root and root not in resolved.parents:
            raise ToolError(f"path {path!r} is outside the workspace {root}")
        return str(resolved)

    def call(self, name: str, arguments: str) -> str:
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            raise ToolError(f"arguments are not valid JSON: {error}") from None
        method = getattr(self, f"tool_{name}", None)
        if method is None or not isinstance(args, dict):
            raise ToolError(f"unknown tool {name!r}" if method is None else "arguments must be an object")
        try:
            return method(**args)
        except TypeError as error:  # missing or unexpected arguments
            raise ToolError(str(error)) from None

    def tool_read_file(self, path: str) -> str:
        try:
            return self.sandbox.read_file(self.path(path))
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as error:
            raise ToolError(f"cannot read {path}: {error}") from None

    def tool_write_file(self, path: str, content: str) -> str:
        self.sandbox.write_file(self.path(path), content)
        return f"wrote {len(content)} characters to {path}"

    def tool_edit_file(self, path: str, old: str, new: str) -> str:
        text = self.tool_read_file(path)
        count = text.count(old)
        if count != 1:
            raise ToolError(f"`old` occurs {count} times in {path}; it must occur exactly once")
        self.sandbox.write_file(self.path(path), text.replace(old, new, 1))
        return f"edited {path}"

    def tool_shell(self, command: str) -> str:
        result = self.sandbox.exec(command, timeout=self.limits.command_timeout)
        status = "timed out" if result.timed_out else f"exit code {result.returncode}"
        output = (result.stdout + result.stderr).strip()
        if not result.success:
            raise ToolError(f"{status}\n{output}")
        return f"{status}\n{output}"

    def tool_search(self, pattern: str, path: str = ".") -> str:
        command = f"grep -rnI --exclude-dir=.git -e {shlex.quote(pattern)} {shlex.quote(self.path(path))}"
        result = self.sandbox.exec(command, timeout=self.limits.command_timeout)
        if result.returncode not in (0, 1):  # 1 is grep's "no match"
            raise ToolError(result.stderr.strip() or f"grep failed with {result.returncode}")
        return result.stdout.strip() or "no match"

    def tool_finish(self, summary: str) -> str:
        return summary


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def run_agent(
    sandbox, task: dict, client: OpenAI, model: str, *, sampling: dict | None = None, limits: AgentLimits | None = None
) -> AgentResult:
    """Run every user query of `task` as successive turns of one conversation."""
    limits = limits or AgentLimits()
    toolbox = Toolbox(sandbox, limits)
    system = task.get("system_prompt") or DEFAULT_SYSTEM_PROMPT.format(workspace=sandbox.workspace)
    messages: list[dict] = [{"role": "system", "content": system}]
    result = AgentResult(stop_reason="no_tool_call", messages=messages)
    for query in task["user_query"]:
        messages.append({"role": "user", "content": query})
        while True:
            if result.steps >= limits.max_steps:
                result.stop_reason = "step_limit"
                return result
            if result.tokens >= limits.max_tokens:
                result.stop_reason = "token_limit"
                return result
            response = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, **(sampling or {}))
            result.steps += 1
            result.tokens += response.usage.total_tokens if response.usage else 0
            message = response.choices[0].message
            tool_calls = message.tool_calls or []
            # content as the model gave it (None beside tool calls): an invented "" reaches an
            # Anthropic route as placeholder text the model never wrote.
            messages.append(
                {"role": "assistant", "content": message.content}
                | ({"tool_calls": [c.model_dump() for c in tool_calls]} if tool_calls else {})
            )
            if not tool_calls:
                result.stop_reason, result.final_answer = "no_tool_call", message.content or ""
                break
            finished = False
            for call in tool_calls:
                try:
                    output = toolbox.call(call.function.name, call.function.arguments)
                except ToolError as error:
                    output = f"{ERROR_PREFIX}{error}"
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": truncate(output, limits.output_chars)}
                )
                if call.function.name == "finish" and not output.startswith(ERROR_PREFIX):
                    finished, result.final_answer = True, output
            if finished:
                result.stop_reason = "finished"
                break
    return result


class Builtin(Scaffold):
    """The builtin agent as a scaffold: `run_agent` on the host, acting through the sandbox."""

    def install(self) -> None:
        pass  # nothing outside this package

    def version(self) -> str:
        return VERSION

    def run(self, sandbox, task, endpoint, model_route, sampling, timeout) -> AgentRun:
        user_queries(task)
        client = OpenAI(
            base_url=endpoint.base_url_host + "/v1",
            api_key=endpoint.api_key,
            default_headers={RUN_HEADER: endpoint.run_id},
            timeout=timeout,
        )
        try:
            result = run_agent(sandbox, task, client, model_route, sampling=sampling or None)
        except SandboxTimeout as error:
            log.error("run %s: builtin agent stopped: %s", sandbox.run_id, error)
            return AgentRun(None, "timeout", str(error), "", self.version(), True)
        except APIError as error:  # the model call failed: the agent's crash
            log.error("run %s: builtin agent failed: %s", sandbox.run_id, error)
            return AgentRun(1, "error", clients.tail(f"{type(error).__name__}: {error}"), "", self.version(), False)
        return AgentRun(0, result.stop_reason, "", result.final_answer, self.version(), False)
