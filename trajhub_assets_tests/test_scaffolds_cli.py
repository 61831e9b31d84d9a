"""The scaffolds end to end: the real agent clients, the real LiteLLM proxy, a scripted upstream.

Each test runs a task of two user queries through one scaffold: the first makes the agent
run a shell command that creates a file, the second must continue the same conversation.
The proxy's recordings show every call carried the run id. The CLIs are installed from
the npm registry / PyPI once (clients.py; scripts/install_clients.sh in CI). Nothing here
needs the internet beyond those registries, nor an API key.

The local sandbox backend runs everywhere; the Docker tests need an engine, started the
way CI starts it (scripts/docker_setup.sh, as root), and are skipped loudly without one
(a failure under CI).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from pathlib import Path
from typing import Self

import pytest

from trajhub_assets.config import ModelConfig
from trajhub_assets.errors import ConfigError
from trajhub_assets.recording.raw_calls import read_run
from trajhub_assets.recording.run_id import make_run_id
from trajhub_assets.recording.scripted_upstream import (
    Fail,
    Reply,
    say,
    text_block,
    tool_use_block,
)
from trajhub_assets.sandbox import Limits, make_sandbox
from trajhub_assets.scaffolds import (
    SCAFFOLDS,
    AgentRun,
    Endpoint,
    Scaffold,
    ScaffoldEntry,
    clients,
    install_clients,
    make_scaffold,
    pinned_clients,
)

ROOT = Path(__file__).parents[1]
FIRST, SECOND = "FIRST QUERY", "SECOND QUERY"
SYSTEM_PROMPT = "SYSTEM PROMPT MARKER: reply in English, concisely."
ANSWER_ONE, ANSWER_TWO = "Answer one: created.txt is there.", "Answer two: nothing else to do."
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
CREATE = "echo made-by-agent > created.txt"

# The tool each client runs shell commands with.
SHELL_TOOL = {
    "claudecode": "Bash",
    "kilo-dev": "bash",
    "droid": "Execute",
    "mini-swe-agent": "bash",
    "builtin": "shell",
}


# -- the scripted model ----------------------------------------------------------------------
def _text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(_text(block.get("content")))
    return "\n".join(parts)


def _is_tool_result(message: dict) -> bool:
    content = message.get("content")
    return message.get("role") == "tool" or (
        isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)
    )


def _tool_args(request, name: str, command: str) -> dict:
    """`command`, plus a filler for any other required string argument of the client's tool."""
    for tool in request.body.get("tools") or []:
        spec = tool.get("function") or tool
        if spec.get("name") == name:
            schema = spec.get("parameters") or spec.get("input_schema") or {}
            args = {
                key: "trajhub test step"
                for key in schema.get("required", [])
                if schema.get("properties", {}).get(key, {}).get("type") == "string"
            }
            return args | {"command": command}
    raise AssertionError(
        f"the client offered no tool {name!r}: "
        f"{[(t.get('function') or t).get('name') for t in request.body.get('tools') or []]}"
    )


def agent_policy(scaffold: str, commands: tuple[str, ...] = (CREATE,)):
    """A model that, on FIRST, runs `commands` one by one (by default `echo ... > created.txt`)
    and then answers; on SECOND answers."""
    shell = SHELL_TOOL[scaffold]

    def policy(request):
        if not request.body.get("tools"):  # a title or summary call, not the agent's turn
            return say("Scaffold test")
        messages = request.body["messages"]
        users = [i for i, m in enumerate(messages) if m["role"] == "user" and not _is_tool_result(m)]
        query = _text(messages[users[-1]]["content"]) if users else ""
        results = [m for m in messages[users[-1] + 1 :] if _is_tool_result(m)] if users else []
        if FIRST in query and len(results) < len(commands):
            step = len(results)
            return Reply(
                [
                    text_block(f"Running command {step + 1}."),
                    tool_use_block(f"call_shell_{step + 1}", shell, _tool_args(request, shell, commands[step])),
                ]
            )
        answer = ANSWER_ONE if FIRST in query else ANSWER_TWO if SECOND in query else "Unexpected."
        if scaffold == "mini-swe-agent":  # every turn is a tool call; submitting ends one
            return Reply([text_block(answer), tool_use_block("call_submit", "bash", {"command": SUBMIT})])
        if scaffold == "builtin":
            return Reply([tool_use_block("call_finish", "finish", {"summary": answer})])
        return say(answer)

    return policy


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed():
    """Install (once, idempotent) every client; a client that cannot be installed is skipped."""
    failures = {}
    for name in ("claudecode", "kilo-dev", "droid", "mini-swe-agent"):
        try:
            make_scaffold(name).install()
            make_scaffold(name).version()
        except clients.ClientError as error:
            failures[name] = str(error)
    return failures


def need(installed, name: str) -> None:
    if name in installed:
        message = f"CLIENT {name} NOT INSTALLED: {installed[name][:1500]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def make_task(tmp_path: Path, instance_id: str = "scaffold-test") -> dict:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "README.md").write_text("A repository for the scaffold tests.\n")
    return {
        "instance_id": instance_id,
        "source": "test",
        "image": "trajhub-demo:py311",
        "workspace_source": str(repo),
        "workspace_abs_path": f"/workspace/{instance_id}",
        "user_query": [f"{FIRST}: create created.txt with a shell command.", f"{SECOND}: anything else?"],
        "system_prompt": SYSTEM_PROMPT,
    }


def endpoint_for(proxy, run_id: str, sandbox_url: str | None = None, api_key: str | None = None):
    return Endpoint(
        base_url_host=proxy.url,
        base_url_sandbox=sandbox_url or proxy.url,
        api_key=api_key or proxy.master_key,
        run_id=run_id,
    )


def run_scaffold(
    name: str,
    proxy,
    task: dict,
    *,
    backend: str = "local",
    sandbox_url=None,
    api_key=None,
    timeout: float = 240,
    route: str | None = None,
    sampling: dict | None = None,
) -> tuple[AgentRun, str, str | None, str]:
    """(agent run, run id, created.txt or None, git diff of the workspace)."""
    run_id = make_run_id("scripted", task["instance_id"], 0)
    route = route or ("scripted-anthropic" if name == "claudecode" else "scripted-openai")
    with make_sandbox(task, backend=backend, run_id=run_id, limits=Limits(run_timeout=600)) as sandbox:
        agent_run = make_scaffold(name).run(
            sandbox, task, endpoint_for(proxy, run_id, sandbox_url, api_key), route, sampling or {}, timeout
        )
        try:
            created = sandbox.read_file("created.txt")
        except FileNotFoundError:
            created = None
        diff = sandbox.exec("git add -A && git diff --cached --stat HEAD").stdout
    return agent_run, run_id, created, diff


def recorded(proxy, run_id: str) -> list[dict]:
    path = proxy.recording(run_id)
    assert path.exists(), f"no call was recorded under run {run_id}"
    run = read_run(path)
    assert not run.bad_lines
    return run.records


def agent_calls(proxy, run_id: str) -> list[dict]:
    return [r for r in recorded(proxy, run_id) if r["call_kind"] != "count_tokens"]


def assert_two_turns(agent_run: AgentRun, created, upstream, proxy, run_id, *, expect_version: str):
    assert agent_run.exit_code == 0, agent_run.stderr_tail
    assert not agent_run.timed_out
    assert agent_run.final_answer.strip() == ANSWER_TWO
    assert expect_version in agent_run.version
    assert created == "made-by-agent\n"
    calls = agent_calls(proxy, run_id)
    assert len(calls) >= 3 and all(c["status"] == "ok" for c in calls), [c["error"] for c in calls]
    # Every call the upstream served was recorded under this run's id (the proxy attributes
    # by the header), and the second query continued the first conversation.
    served = [s for s in upstream.served if s.request.wire_format != "count_tokens"]
    assert len(calls) == len(served)
    second = [
        s.request.body for s in upstream.served if SECOND in json.dumps(s.request.body) and s.request.body.get("tools")
    ]
    assert second and ANSWER_ONE in json.dumps(second[-1]), "the second query started a new conversation"
    assert SYSTEM_PROMPT in json.dumps(second[-1])


# -- the registry ---------------------------------------------------------------------------
def test_every_entry_makes_its_scaffold_with_its_pin():
    assert set(SCAFFOLDS) == {"claudecode", "kilo-dev", "droid", "mini-swe-agent", "builtin"}
    for name, entry in SCAFFOLDS.items():
        scaffold = make_scaffold(name)
        assert isinstance(scaffold, Scaffold) and (scaffold.name, scaffold.client) == (name, entry.client)
    assert set(pinned_clients()) == {"claude-code", "kilo", "droid", "mini-swe-agent"}
    assert SCAFFOLDS["builtin"].client is None  # nothing to install
    with pytest.raises(ConfigError, match="unknown scaffold 'cursor'; known: claudecode, kilo-dev"):
        make_scaffold("cursor")


def test_pinned_clients_are_exact_versions():
    for client in pinned_clients().values():
        assert client.version.count(".") == 2 and client.version.replace(".", "").isdigit()


class EchoScaffold(Scaffold):
    """A scaffold that exists only in this test: the one-entry extension."""

    def install(self) -> None:
        pass

    def version(self) -> str:
        return f"echo {self.client.version}"

    def run(self, sandbox, task, endpoint, model_route, sampling, timeout) -> AgentRun:
        return AgentRun(0, "completed", "", "echo", self.version(), False)


ECHO = ScaffoldEntry(
    "echo",
    f"{__name__}:EchoScaffold",
    clients.Client("echo-cli", "pip", "echo-cli", "1.2.3", "bin/echo"),
    {"Shout": "shell"},
    error_prefix="ECHO FAILED: ",
)


def test_a_new_scaffold_is_one_entry(monkeypatch, capsys):
    model = {"name": "m", "route": "openai/m", "scaffold": "echo"}
    with pytest.raises(ValueError, match="unknown scaffold 'echo'"):
        ModelConfig(**model)
    monkeypatch.setitem(SCAFFOLDS, "echo", ECHO)
    assert ModelConfig(**model).scaffold == "echo"
    scaffold = make_scaffold("echo")
    assert isinstance(scaffold, EchoScaffold) and scaffold.version() == "echo 1.2.3"
    # scripts/install_clients.sh lists and installs it with the others
    installed = []
    monkeypatch.setattr(clients, "install", installed.append)
    monkeypatch.setattr(clients, "version", lambda client: client.version)
    lines = install_clients([])
    assert [c.name for c in installed] == ["claude-code", "kilo", "droid", "mini-swe-agent", "echo-cli"]
    assert any(line.startswith("echo-cli: 1.2.3") for line in lines)


def test_endpoint_repr_hides_the_key():
    assert "sk-secret" not in repr(Endpoint("http://h", "http://s", "sk-secret", "run"))


# -- local backend ----------------------------------------------------------------------------
def test_builtin_through_the_proxy(proxy, upstream, tmp_path):
    upstream.set_script(agent_policy("builtin"))
    agent_run, run_id, created, _ = run_scaffold("builtin", proxy, make_task(tmp_path))
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="1")
    assert agent_run.stop_reason == "finished"


def test_claudecode_two_queries_one_conversation(installed, proxy, upstream, tmp_path):
    need(installed, "claudecode")
    upstream.set_script(agent_policy("claudecode"))
    agent_run, run_id, created, diff = run_scaffold("claudecode", proxy, make_task(tmp_path))
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="2.1.330")
    assert agent_run.stop_reason == "completed"
    assert "created.txt" in diff and ".trajhub" not in diff  # the CLI's HOME is outside the workspace
    calls = agent_calls(proxy, run_id)
    assert {c["wire_format"] for c in calls} == {"anthropic_messages"}
    assert {c["model"] for c in calls} == {"scripted-anthropic"}  # every model alias is the route


def test_claudecode_crash_is_reported_with_its_error(installed, proxy, upstream, tmp_path):
    need(installed, "claudecode")
    upstream.set_script(agent_policy("claudecode"))
    agent_run, _, created, _ = run_scaffold("claudecode", proxy, make_task(tmp_path), api_key="sk-not-the-proxy-key")
    assert agent_run.exit_code not in (0, None) and not agent_run.timed_out
    assert "API Error" in agent_run.stderr_tail and "sk-not-the-proxy-key" not in agent_run.stderr_tail
    assert created is None and upstream.calls == 0


def test_claudecode_timeout_stops_the_agent(installed, proxy, upstream, tmp_path):
    need(installed, "claudecode")
    upstream.set_script(lambda request: say("too late", delay=60))
    agent_run, *_ = run_scaffold("claudecode", proxy, make_task(tmp_path), timeout=8)
    assert agent_run.timed_out and agent_run.exit_code is None and agent_run.stop_reason == "timeout"


def test_mini_swe_agent_two_queries_one_conversation(installed, proxy, upstream, tmp_path):
    need(installed, "mini-swe-agent")
    upstream.set_script(agent_policy("mini-swe-agent"))
    agent_run, run_id, created, _ = run_scaffold(
        "mini-swe-agent", proxy, make_task(tmp_path), sampling={"temperature": 0.25}
    )
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="2.4.6")
    assert agent_run.stop_reason == "Submitted"
    assert all(s.request.body.get("temperature") == 0.25 for s in upstream.served)


def test_mini_swe_agent_crash_is_reported_with_its_stderr(installed, proxy, upstream, tmp_path):
    need(installed, "mini-swe-agent")
    # mini retries most API errors for minutes; an authentication error it does not.
    upstream.set_script([Fail(401, "the upstream refused the key")])
    agent_run, *_ = run_scaffold("mini-swe-agent", proxy, make_task(tmp_path))
    assert agent_run.exit_code not in (0, None) and agent_run.stop_reason == "error"
    assert "AuthenticationError" in agent_run.stderr_tail
    assert proxy.master_key not in agent_run.stderr_tail


def test_kilo_two_queries_one_conversation(installed, proxy, upstream, tmp_path):
    need(installed, "kilo-dev")
    upstream.set_script(agent_policy("kilo-dev"))
    agent_run, run_id, created, _ = run_scaffold("kilo-dev", proxy, make_task(tmp_path), sampling={"temperature": 0.25})
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="7.7.9")
    agent_turns = [s.request.body for s in upstream.served if s.request.body.get("tools")]
    assert all(body.get("temperature") == 0.25 for body in agent_turns)


def test_droid_two_queries_one_conversation(installed, proxy, upstream, tmp_path):
    need(installed, "droid")
    upstream.set_script(agent_policy("droid"))
    agent_run, run_id, created, _ = run_scaffold("droid", proxy, make_task(tmp_path), sampling={"temperature": 0.25})
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="0.225.2")
    agent_turns = [s.request.body for s in upstream.served if s.request.body.get("tools")]
    assert all(body.get("temperature") == 0.25 for body in agent_turns)


@pytest.mark.parametrize("name", ["kilo-dev", "droid"])
def test_kilo_and_droid_crash_is_reported(installed, proxy, upstream, tmp_path, name):
    need(installed, name)
    upstream.set_script(agent_policy(name))
    agent_run, *_ = run_scaffold(name, proxy, make_task(tmp_path), api_key="sk-wrong-key", timeout=120)
    assert agent_run.exit_code != 0 and not agent_run.timed_out, agent_run
    assert agent_run.stderr_tail and "sk-wrong-key" not in agent_run.stderr_tail
    assert upstream.calls == 0


# -- Docker backend ---------------------------------------------------------------------------
class Relay:
    """TCP relay from the host's every address to the proxy on loopback.

    The proxy fixture listens on 127.0.0.1; a container reaches the host only on its bridge
    address (host.docker.internal). A deployment binds the proxy where containers see it.
    """

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, target_writer), self._pipe(target_reader, writer))

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "0.0.0.0", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def sandbox_proxy_url(docker_engine, proxy):
    with Relay(proxy.process.port) as relay:
        yield f"http://host.docker.internal:{relay.port}"


@pytest.mark.parametrize("name", ["builtin", "claudecode", "mini-swe-agent", "kilo-dev"])
def test_scaffold_in_docker(installed, proxy, upstream, tmp_path, sandbox_proxy_url, name):
    if name != "builtin":
        need(installed, name)
    upstream.set_script(agent_policy(name))
    agent_run, run_id, created, diff = run_scaffold(
        name, proxy, make_task(tmp_path, f"docker-{name}"), backend="docker", sandbox_url=sandbox_proxy_url
    )
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version=make_scaffold(name).version())
    assert "created.txt" in diff and ".trajhub" not in diff


def test_droid_in_docker_no_command_is_killed(installed, proxy, upstream, tmp_path, sandbox_proxy_url):
    """Droid's command supervisor SIGKILLs a command whenever `ps` fails, and the demo image has
    no `ps`: every command must run to its end on the scaffold's stand-in (scaffolds/droid.py)."""
    need(installed, "droid")
    commands = (CREATE, *(f"sleep 0.5; echo step-{i} >> steps.txt" for i in range(4)), "command -v ps")
    upstream.set_script(agent_policy("droid", commands))
    agent_run, run_id, created, diff = run_scaffold(
        "droid", proxy, make_task(tmp_path, "docker-droid"), backend="docker", sandbox_url=sandbox_proxy_url
    )
    assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="0.225.2")
    assert "steps.txt" in diff
    last_of_first = [
        s.request.body
        for s in upstream.served
        if s.request.body.get("tools")
        and FIRST in json.dumps(s.request.body)
        and SECOND not in json.dumps(s.request.body)
    ][-1]
    results = [_text(m["content"]) for m in last_of_first["messages"] if _is_tool_result(m)]
    assert len(results) == len(commands)
    killed = [r for r in results if "[Process exited with code 0]" not in r or "SIGKILL" in r]
    assert not killed, killed
    assert ".factory/bin/ps" in results[-1]  # the stand-in; with the image's own ps this tests nothing


def test_claudecode_in_docker_as_a_non_root_user_with_the_workspace_in_the_image(
    installed, proxy, upstream, tmp_path, sandbox_proxy_url, docker_engine
):
    """OctoCodingBench-style image: the repository is in it, and its user is not root."""
    need(installed, "claudecode")
    from trajhub_assets.sandbox.images import ensure_demo_image

    dockerfile = (
        f"FROM {ensure_demo_image(docker_engine)}\n"
        "RUN useradd -m agent && mkdir -p /app && echo 'x = 1' > /app/mod.py "
        "&& chown -R agent /app\nUSER agent\n"
    )
    docker_engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag="trajhub-test-scaffold-user:1", rm=True)
    task = {
        **make_task(tmp_path, "docker-non-root"),
        "image": "trajhub-test-scaffold-user:1",
        "workspace_abs_path": "/app",
    }
    del task["workspace_source"]
    try:
        upstream.set_script(agent_policy("claudecode"))
        agent_run, run_id, created, diff = run_scaffold(
            "claudecode", proxy, task, backend="docker", sandbox_url=sandbox_proxy_url
        )
        assert_two_turns(agent_run, created, upstream, proxy, run_id, expect_version="2.1.330")
        assert "created.txt" in diff
    finally:
        docker_engine.images.remove("trajhub-test-scaffold-user:1", force=True)
