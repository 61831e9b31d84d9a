"""Conformance: what a scaffold sent and received on the wire is what trajhub stored, merged,
scored, released and replays.

A model is configured as a user configures one (README: A model on your own endpoint): a
project file with `route: anthropic/<name>`, `api_base` and `api_key_env`, and an outside
judge. The whole graph runs through Dagster against a scripted upstream that keeps every
request as received (path, headers, exact body) and every answer. That upstream is the
truth: each assertion compares a stored row, a merged message or a released file with it.

The scripted model drives Claude Code (the pinned native binary, in Docker) through a
demo task of two user queries: a reply with a signed thinking block and a Bash `cat`, a
Read, an Explore subagent, an Edit, a test run, a final answer; then the second query
continues the same conversation. Claude Code's side calls (title, quota, count_tokens, ...)
would be answered too. Claude Code streams every call; the scripted upstream serves each request in the
mode it asked for.

The builtin agent is the second scaffold, on the same route: it speaks OpenAI chat, which
the proxy translates to Anthropic messages (not streamed), so its requests are compared with
the upstream's as conversations (role, text, tool calls and results) rather than as bodies.

Kilo (kilo-dev), Droid and mini-swe-agent are the OpenAI chat clients, on a model configured
with `route: openai/<name>` and `api_base: <upstream>/v1`, in the local backend
(conformance_chat.py holds their script and the reading of OpenAI chat messages). The proxy
forwards their bodies as sent, so each is compared with the upstream's field by field;
mini-swe-agent's script has a text-only reply, which mini drops from its history: an `edit`.

Known open: the proxy rewrites Claude Code's `thinking` and drops its `output_config` on the
way upstream, so the request-body assertion fails until the forwarding fix lands.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterInstance

from trajhub_assets.branching.accounting import live_call_ids
from trajhub_assets.branching.schema import BRANCH_MESSAGE_BLOBS, BRANCH_RAW_CALLS, BRANCHED_TRAJECTORIES
from trajhub_assets.config import load_config
from trajhub_assets.jobs import branch_job, build_pairs_job, record_and_score_job, release_job
from trajhub_assets.merge.schema import table_to_conversations
from trajhub_assets.orchestration import prepare, run_stage
from trajhub_assets.partitions import instances_partitions, run_partitions
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.recording.scripted_upstream import (
    Reply,
    ScriptedUpstream,
    say,
    text_block,
    thinking_block,
    tool_use_block,
)
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.scaffolds import clients, make_scaffold
from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog
from trajhub_assets_tests.conformance_chat import (
    DROPPED_REPLY,
    SECTION,
    SHELL_TOOL,
    _leftovers,
    chat_answer,
    chat_messages,
    chat_model,
)

TASK = "demo-pagination-offset"  # two user queries
WORKSPACE = f"/workspace/{TASK}"
MODEL_NAME, ROUTE = "acme/claude-conf", "anthropic/claude-conf-1"
MODEL_KEY_ENV, MODEL_KEY = "CONF_ANTHROPIC_KEY", "sk-ant-conf-user-3b7e19"
JUDGE_KEY_ENV, JUDGE_KEY = "CONF_JUDGE_KEY", "sk-conf-judge-c40a52"
MASTER_KEY_PREFIX = "sk-trajhub-"
TITLE = "Fix pagination"
ANSWER_ONE = "Fixed: page 1 now starts at offset 0 and a partial last page is counted."
ANSWER_TWO = "Added has_next and has_previous to Page."


# -- the scripted model -------------------------------------------------------------------
def signed(step: str) -> dict:
    return thinking_block(f"Thinking about {step}: read before editing.", f"EqQBCkYIBxgCKkD{step}sig==")


def bash(block_id: str, command: str) -> dict:
    return tool_use_block(block_id, "Bash", {"command": command, "description": "Run " + command.split()[0]})


PAGINATE = f"{WORKSPACE}/pager/paginate.py"
READ = {"file_path": PAGINATE}
FIX = {
    "file_path": PAGINATE,
    "old_string": "    total_pages = total_items // per_page\n    start = page * per_page",
    "new_string": "    total_pages = -(-total_items // per_page)\n    start = (page - 1) * per_page",
}
NAVIGATION = {
    "file_path": PAGINATE,
    "old_string": "    total_pages: int\n",
    "new_string": "    total_pages: int\n\n    @property\n    def has_previous(self) -> bool:\n"
    "        return self.number > 1\n\n"
    "    @property\n    def has_next(self) -> bool:\n"
    "        return self.number < self.total_pages\n",
}
TESTS = "python3 -m unittest discover -s tests -v"
SUBAGENT_TASK = "SUBAGENT TASK: list the files of the pager package and report them."
SUBAGENT_REPORT = "SUBAGENT REPORT: pager/ holds __init__.py and paginate.py."
EXPLORE = {
    "description": "List pager files",
    "prompt": SUBAGENT_TASK,
    "subagent_type": "Explore",
    "run_in_background": False,
}
# Each conversation's turns, in order: the nth reply after its user message.
CLAUDE_CODE_TURNS = {
    "query 1": [
        Reply([signed("q1"), text_block("Let me look at paginate()."), bash("toolu_cat_1", "cat pager/paginate.py")]),
        Reply([tool_use_block("toolu_read_1", "Read", READ)]),
        Reply([tool_use_block("toolu_agent_1", "Agent", EXPLORE)]),
        Reply([signed("fix"), tool_use_block("toolu_edit_1", "Edit", FIX)]),
        Reply([bash("toolu_test_1", TESTS)]),
        say(ANSWER_ONE),
    ],
    "query 2": [
        Reply([signed("q2"), tool_use_block("toolu_read_2", "Read", READ)]),
        Reply([tool_use_block("toolu_edit_2", "Edit", NAVIGATION)]),
        Reply([bash("toolu_test_2", TESTS)]),
        say(ANSWER_TWO),
    ],
    "subagent": [Reply([bash("toolu_ls_sub", "ls pager")]), say(SUBAGENT_REPORT)],
}


def relative(arguments: dict) -> dict:
    """The builtin agent's form of a Claude Code tool's arguments: a path in the workspace."""
    renamed = {"file_path": "path", "old_string": "old", "new_string": "new"}
    return {renamed[k]: v.removeprefix(f"{WORKSPACE}/") if k == "file_path" else v for k, v in arguments.items()}


def shell(block_id: str, command: str) -> dict:
    return tool_use_block(block_id, "shell", {"command": command})


def finish(block_id: str, summary: str) -> dict:
    return tool_use_block(block_id, "finish", {"summary": summary})


BUILTIN_TURNS = {
    "query 1": [
        Reply([signed("q1"), text_block("Let me look at paginate()."), shell("toolu_cat_1", "cat pager/paginate.py")]),
        Reply([tool_use_block("toolu_read_1", "read_file", relative(READ))]),
        Reply([signed("fix"), tool_use_block("toolu_edit_1", "edit_file", relative(FIX))]),
        Reply([shell("toolu_test_1", TESTS)]),
        Reply([finish("toolu_finish_1", ANSWER_ONE)]),
    ],
    "query 2": [
        Reply([signed("q2"), tool_use_block("toolu_read_2", "read_file", relative(READ))]),
        Reply([tool_use_block("toolu_edit_2", "edit_file", relative(NAVIGATION))]),
        Reply([shell("toolu_test_2", TESTS)]),
        Reply([finish("toolu_finish_2", ANSWER_TWO)]),
    ],
}
QUERY_ONE, QUERY_TWO = "/orders endpoint", "Thanks. The frontend"


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")


def scripted_model(turns: dict):
    """The upstream's policy: each conversation (found by its user message) gets its next turn."""

    def policy(request):
        if request.wire_format == "count_tokens":
            return Reply([], input_tokens=321)
        if not request.body.get("tools"):  # a title, quota or summary call, not the agent's turn
            return say(TITLE)
        messages = request.body["messages"]
        markers = {QUERY_ONE: "query 1", QUERY_TWO: "query 2", SUBAGENT_TASK: "subagent"}
        # A user turn may hold tool results and the next query (the builtin agent's, translated).
        index, lane = max(
            (i, lane)
            for i, m in enumerate(messages)
            if m["role"] == "user"
            for marker, lane in markers.items()
            if marker in _text(m["content"])
        )
        step = sum(m["role"] == "assistant" for m in messages[index:])
        return copy.deepcopy(turns[lane][min(step, len(turns[lane]) - 1)])

    return policy


# -- the project, as a user writes it --------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A scaffold as the suite runs it: its script, its sandbox backend, the model's route and key."""

    policy: Callable
    backend: str = "docker"
    route: str = ROUTE
    name: str = MODEL_NAME
    key_env: str = MODEL_KEY_ENV
    key: str = MODEL_KEY

    @property
    def openai_route(self) -> bool:
        """An OpenAI chat client on an `openai/` route: the proxy forwards bodies as sent."""
        return self.route.startswith("openai/")

    def api_base(self, upstream_url: str) -> str:
        return f"{upstream_url}/v1" if self.openai_route else upstream_url


def write_project(tmp_path: Path, scaffold: str, case: Case, upstream_url: str, judge_url: str) -> str:
    demo = {item.record["instance_id"]: item.record for item in load_catalog(load_config())}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(demo[TASK]) + "\n")
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(tasks)}],
                "models": [
                    {
                        "name": case.name,
                        "route": case.route,
                        "api_base": case.api_base(upstream_url),
                        "api_key_env": case.key_env,
                        "scaffold": scaffold,
                    }
                ],
                "sandbox": {"backend": case.backend, "timeout_s": 600, "max_concurrent": 1, "cpus": 1, "memory": "2g"},
                "judge": {"model": "judge", "base_url": judge_url, "api_key_env": JUDGE_KEY_ENV},
                "release": {"min_margin": 0.0, "replay_sample": 1},
                # the Anthropic-route scaffolds' run is branched too, continued at the same endpoint
                "branching": {"points": ["even"], "samples": 2, "max_per_run": 1} if not case.openai_route else {},
            }
        )
    )
    return str(config)


# The OpenAI chat clients, on a model configured with `route: openai/<name>`, in Docker.
CHAT_MODEL_NAME, CHAT_ROUTE = "acme/gpt-conf", "openai/gpt-conf-1"
CHAT_KEY_ENV, CHAT_KEY = "CONF_OPENAI_KEY", "sk-conf-openai-user-5d21a8"


def chat_case(scaffold: str) -> Case:
    return Case(chat_model(scaffold), "docker", CHAT_ROUTE, CHAT_MODEL_NAME, CHAT_KEY_ENV, CHAT_KEY)


SCAFFOLDS = {
    "claudecode": Case(scripted_model(CLAUDE_CODE_TURNS)),
    "builtin": Case(scripted_model(BUILTIN_TURNS)),
    **{name: chat_case(name) for name in SHELL_TOOL},
}
# Tests that hold for one kind of route only run on its scaffolds (none is skipped).
ANTHROPIC_ROUTE = [name for name, case in SCAFFOLDS.items() if not case.openai_route]
CHAT_CLIENTS = [name for name, case in SCAFFOLDS.items() if case.openai_route]


@pytest.fixture(scope="module", params=list(SCAFFOLDS))
def conformance(request, tmp_path_factory):
    scaffold, case = request.param, SCAFFOLDS[request.param]
    if case.backend == "docker":
        request.getfixturevalue("docker_engine")
    if scaffold != "builtin":
        try:
            make_scaffold(scaffold).install()
        except clients.ClientError as error:
            pytest.fail(f"{scaffold} is not installed (scripts/install_clients.sh): {error}")
    tmp_path = tmp_path_factory.mktemp(f"conformance-{scaffold}")
    home = tmp_path / "home"
    with (
        ScriptedUpstream(case.policy) as upstream,
        ScriptedUpstream(upstream_policy(BaselinePolicies([]))) as judge,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv(case.key_env, case.key)
        env.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
        config = write_project(tmp_path, scaffold, case, upstream.url, f"{judge.url}/v1")
        project = ProjectResource(path=config)
        res = {
            "store": StoreResource(root=str(home)),
            "project": project,
            "proxy": ProxyResource(project=project, recordings_dir=str(home / "recordings")),
        }
        instance = DagsterInstance.ephemeral()
        prepare(instance, res)
        keys = run_partitions.get_partition_keys(dynamic_partitions_store=instance)
        run_stage(instance, record_and_score_job, keys, resources=res)
        recorded = len(upstream.served)  # what the run sent; its branches' live calls come after
        if not case.openai_route:
            run_stage(instance, branch_job, keys, resources=res)
        branched = len(upstream.served)  # and the replay's calls (none should reach it) after those
        run_stage(
            instance,
            build_pairs_job,
            instances_partitions.get_partition_keys(dynamic_partitions_store=instance),
            resources=res,
        )
        release = run_stage(instance, release_job, resources=res)
        store = Store(home)
        served = list(upstream.served)
        data = {
            "scaffold": scaffold,
            "case": case,
            "served": served[:recorded],
            "branch_served": served[recorded:branched],
            "replayed": served[branched:],
            "judge": list(judge.served),
            "store": store,
            "home": home,
            "release": release,
        }
    # What the upstream received, for reading when an assertion fails.
    (tmp_path / "served.json").write_text(
        json.dumps(
            [
                {
                    "path": s.request.path,
                    "stream": s.stream,
                    "headers": s.request.headers,
                    "body": s.request.body,
                    "answer": s.body,
                }
                for s in served
            ],
            indent=1,
        )
    )
    return data


# -- the wire, read independently of the merge ------------------------------------------------
# What the merge README says a message keeps, written out for the blocks Claude Code sends:
# text blocks concatenated (system blocks and thinking joined by a blank line), a tool_result
# its own `tool` message, tool calls in OpenAI form, signed thinking in thinking_blocks,
# `cache_control` dropped, any other field in `extra` under its path.
def _part(block: dict) -> dict:
    return {
        "type": block["type"],
        "text": block.get("text") if block["type"] == "text" else None,
        "media_type": None,
        "ref": block.get("id") if block["type"] == "tool_use" else None,
    }


def _message(role: str, content, **fields) -> dict:
    return {
        "role": role,
        "content": content,
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "is_error": None,
        "content_parts": None,
        "thinking_blocks": None,
        "extra": None,
    } | fields


def _texts(blocks, separator: str, start: int = 0) -> tuple[str | None, list | None, dict]:
    if blocks is None or isinstance(blocks, str):
        return blocks, None, {}
    extra = {}
    for i, block in enumerate(blocks, start):
        assert block["type"] == "text", f"a {block['type']} block: extend this reading of the wire"
        _leftovers(block, {"type", "text"}, f"content[{i}].", extra)
    text = separator.join(b["text"] for b in blocks)
    return text, None if len(blocks) == 1 else [_part(b) for b in blocks], extra


def wire_assistant(content) -> dict:
    if isinstance(content, str):
        return _message("assistant", content)
    texts, thinking, calls, extra = [], [], [], {}
    for i, block in enumerate(content):
        if block["type"] == "thinking":
            thinking.append(
                {"type": "thinking", "thinking": block["thinking"], "signature": block.get("signature"), "data": None}
            )
            _leftovers(block, {"type", "thinking", "signature"}, f"content[{i}].", extra)
        elif block["type"] == "text":
            texts.append(block["text"])
            _leftovers(block, {"type", "text"}, f"content[{i}].", extra)
        else:
            assert block["type"] == "tool_use", block
            calls.append({"id": block["id"], "type": "function", "name": block["name"], "arguments": block["input"]})
            _leftovers(block, {"type", "id", "name", "input"}, f"content[{i}].", extra)
    order = [{"thinking": 0, "text": 1, "tool_use": 2}[b["type"]] for b in content]
    flat = order == sorted(order) and order.count(1) <= 1
    return _message(
        "assistant",
        "".join(texts),
        tool_calls=calls or None,
        reasoning_content=SECTION.join(t["thinking"] for t in thinking) if thinking else None,
        thinking_blocks=thinking or None,
        content_parts=None if flat else [_part(b) for b in content],
        extra=extra or None,
    )


def wire_messages(body: dict) -> list[dict]:
    """The request's messages as the merge README says they are kept."""
    out, names = [], {}
    if body.get("system"):
        text, parts, extra = _texts(body["system"], SECTION)
        out.append(
            _message(
                "system",
                text,
                content_parts=parts,
                extra={k.replace("content", "system", 1): v for k, v in extra.items()} or None,
            )
        )
    for m in body["messages"]:
        assert set(m) <= {"role", "content"}, m
        if m["role"] == "assistant":
            out.append(wire_assistant(m["content"]))
            names |= {c["id"]: c["name"] for c in out[-1]["tool_calls"] or []}
        elif m["role"] == "system":  # Claude Code's `# Environment` block, in place
            text, parts, extra = _texts(m["content"], SECTION)
            out.append(_message("system", text, content_parts=parts, extra=extra or None))
        elif isinstance(m["content"], str):
            out.append(_message("user", m["content"]))
        else:
            pending = []

            def flush(end: int, pending=pending):  # this message's pending blocks
                if pending:
                    text, parts, extra = _texts(pending, "", end - len(pending))
                    out.append(_message("user", text, content_parts=parts, extra=extra or None))
                    pending.clear()

            for i, block in enumerate(m["content"]):
                if block["type"] != "tool_result":
                    pending.append(block)
                    continue
                flush(i)
                text, parts, extra = _texts(block.get("content"), "")
                _leftovers(block, {"type", "tool_use_id", "content", "is_error"}, "", extra)
                call = block["tool_use_id"]
                out.append(
                    _message(
                        "tool",
                        text,
                        tool_call_id=call,
                        name=names[call],
                        is_error=bool(block.get("is_error", False)),
                        content_parts=parts,
                        extra=extra or None,
                    )
                )
            flush(len(m["content"]))
    return out


def _same_turn(a: dict, b: dict, defaults: dict | None = None) -> bool:
    """Equal as the merge compares an echo with a response: text and tool calls, not thinking,
    and tool arguments without those at their schema default (`defaults`: tool -> {arg: value})."""

    def arguments(call):
        at_default = (defaults or {}).get(call["name"], {})
        return {k: v for k, v in call["arguments"].items() if k not in at_default or at_default[k] != v}

    def key(m):
        return (m["content"] or "", [(c["id"], c["name"], arguments(c)) for c in m["tool_calls"] or []])

    return key(a) == key(b)


def schema_defaults(anthropic_tools: list[dict] | None) -> dict:
    return {
        t["name"]: {
            k: p["default"]
            for k, p in (t.get("input_schema") or {}).get("properties", {}).items()
            if isinstance(p, dict) and "default" in p
        }
        for t in anthropic_tools or []
    }


def merged_view(message: dict) -> dict:
    """A stored message in the shape of wire_messages, plus its generation fields."""
    view = {
        k: message[k]
        for k in (
            "role",
            "content",
            "reasoning_content",
            "tool_call_id",
            "name",
            "is_error",
            "content_parts",
            "thinking_blocks",
            "generation",
            "generated_by",
        )
    }
    calls = message["tool_calls"]
    view["tool_calls"] = (
        None
        if calls is None
        else [
            {"id": c["id"], "type": c["type"], "name": c["name"], "arguments": json.loads(c["arguments"])}
            for c in calls
        ]
    )
    view["extra"] = json.loads(message["extra"]) if message["extra"] is not None else None
    return view


def openai_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages read the same way (the builtin agent's requests as recorded),
    reasoning from LiteLLM's `thinking_blocks`."""
    out = []
    for m in messages:
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"]),
            }
            for c in m.get("tool_calls") or []
        ]
        thinking = [
            {"type": b["type"], "thinking": b.get("thinking"), "signature": b.get("signature"), "data": b.get("data")}
            for b in m.get("thinking_blocks") or []
        ]
        out.append(
            _message(
                m["role"],
                m.get("content"),
                tool_calls=calls or None,
                tool_call_id=m.get("tool_call_id"),
                thinking_blocks=thinking or None,
            )
        )
    return out


def core(message: dict) -> tuple:
    """What a conversation says, in any wire format: role, text, tool calls, tool results."""
    return (
        message["role"],
        message["content"] or "",
        [(c["id"], c["name"], c["arguments"]) for c in message["tool_calls"] or []],
        message["tool_call_id"],
    )


# What the Anthropic API requires and an OpenAI chat request may leave out.
REQUIRED_BY_ANTHROPIC = {"max_tokens"}


def translation_differences(record: dict, received: dict) -> list[str]:
    """An OpenAI chat request the proxy sent on as Anthropic messages: the conversation the
    upstream received is the recorded one, message by message, and no parameter was added
    but what the Anthropic API requires."""
    seq, sent = record["seq"], record["request"]
    sent_messages = [core(m) for m in openai_messages(sent["messages"])]
    got_messages = [core(m) for m in wire_messages(received)]
    differences = [
        f"seq {seq} messages[{i}]: recorded {a} != upstream {b}"
        for i, (a, b) in enumerate(zip(sent_messages, got_messages, strict=False))
        if a != b
    ]
    if len(sent_messages) != len(got_messages):
        differences.append(f"seq {seq}: {len(sent_messages)} messages recorded, {len(got_messages)} received")
    added = set(received) - set(sent) - {"system"} - REQUIRED_BY_ANTHROPIC
    differences += [
        f"seq {seq} {key}: not in the recorded request, upstream got {json.dumps(received[key])}"
        for key in sorted(added)
    ]
    return differences


# -- the run, through Dagster ------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(conformance) -> dict:
    """The run's rows, its recorded calls paired with what the upstream received."""
    store = conformance["store"]
    (row,) = store.sql("SELECT * FROM runs").to_pylist()
    partition = {"model": row["model"], "instance": TASK}
    records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    conversations = store.sql(
        "SELECT * EXCLUDE (model, instance) FROM merged_trajectories ORDER BY conversation_id"
    ).to_pylist()
    return {
        "row": row,
        "records": records,
        "conversations": conversations,
        "main": [c for c in conversations if c["kind"] == "main"],
    }


def _content_of(body: dict) -> str:
    """A request by what it says: the fields a proxy has no reason to touch."""
    return json.dumps([body.get("system"), body.get("messages"), body.get("tools")], sort_keys=True)


def pair(records: list[dict], served: list) -> list[tuple[dict, object]]:
    """Each recorded call with the upstream request saying the same, in recorded order; every
    upstream request used once. A client speaking OpenAI chat (the builtin agent) calls one at
    a time, and the proxy translates: its calls pair in order."""
    if {r["wire_format"] for r in records} == {"openai_chat"}:
        assert len(records) == len(served)
        return list(zip(records, served, strict=True))
    left = list(served)
    pairs = []
    for record in records:
        match = next((s for s in left if _content_of(s.request.body) == _content_of(record["request"])), None)
        assert match is not None, f"recorded call seq {record['seq']} never reached the upstream as recorded"
        left.remove(match)
        pairs.append((record, match))
    assert not left, f"upstream requests without a recorded call: {[s.request.index for s in left]}"
    return pairs


def call_ids(conformance, run) -> dict[int, str]:
    """id(upstream request) → the recorded call's id."""
    pairs = pair(run["records"], conformance["served"])
    return {id(upstream): record["call_id"] for record, upstream in pairs}


def main_requests(served: list) -> list:
    return [
        s
        for s in served
        if s.request.body.get("tools")
        and s.request.path == "/v1/messages"
        and "/orders endpoint" in _text(s.request.body["messages"][0]["content"])
    ]


def chat_main_requests(served: list) -> list:
    """An OpenAI chat client's agent turns: a user message of the task's first query (Droid's
    comes after a reminder of its own), a reply that is not the one the client dropped."""
    return [
        s
        for s in served
        if s.request.body.get("tools")
        and s.request.path == "/v1/chat/completions"
        and any(m["role"] == "user" and QUERY_ONE in _text(m["content"]) for m in s.request.body["messages"])
    ]


def dropped_requests(served: list) -> list:
    """The requests answered with the reply mini-swe-agent drops from its history."""
    return [
        s
        for s in served
        if s.request.path == "/v1/chat/completions" and s.body["choices"][0]["message"].get("content") == DROPPED_REPLY
    ]


# -- the assertions ----------------------------------------------------------------------------
def test_the_run_completed_both_queries(conformance, run):
    row = run["row"]
    assert row["error"] is None and row["agent_exit_code"] == 0, row
    assert row["scaffold_version"] == make_scaffold(conformance["scaffold"]).version()
    assert row["backend"] == conformance["case"].backend
    assert row["final_answer"] == ANSWER_TWO and row["resolved"], row["test_output_tail"]
    assert "has_next" in row["diff"] and "(page - 1) * per_page" in row["diff"]


def test_every_upstream_request_is_a_recorded_call_of_the_run(conformance, run):
    served, records = conformance["served"], run["records"]
    assert len(records) == len(served) > 0
    assert {r["run_id"] for r in records} == {run["row"]["run_id"]}
    assert sorted(r["seq"] for r in records) == list(range(len(records)))
    assert len({r["call_id"] for r in records}) == len(records)
    assert all(s.status == 200 for s in served) and all(r["status"] == "ok" for r in records)
    pairs = pair(records, served)
    # The stored answer is the one the upstream sent (streamed: reassembled by the proxy).
    for record, upstream in pairs:
        assert record["stream"] == upstream.stream
        if conformance["case"].openai_route:  # forwarded as it came: the same message, field by field
            assert chat_answer(record["response"]) == chat_answer(upstream.body), record["seq"]
        elif record["wire_format"] == "anthropic_messages":
            assert record["response"]["content"] == upstream.body["content"], record["seq"]
        else:  # translated to OpenAI chat by the proxy: the same turn, thinking included
            (answer,) = openai_messages([record["response"]["choices"][0]["message"]])
            assert core(answer) == core(wire_assistant(upstream.body["content"])), record["seq"]
            assert answer["thinking_blocks"] == wire_assistant(upstream.body["content"])["thinking_blocks"]


def test_the_upstream_received_each_recorded_request_body_except_the_model(conformance, run):
    """The proxy forwards what the client sent: the body the upstream received is the recorded
    request, field for field, but for `model` (the route's provider prefix is the proxy's)."""
    differences = []
    for record, upstream in pair(run["records"], conformance["served"]):
        sent, received = record["request"], upstream.request.body
        route = conformance["case"].route
        assert (sent["model"], received["model"]) == (route, route.split("/", 1)[1])
        if record["wire_format"] == "openai_chat" and not conformance["case"].openai_route:
            differences += translation_differences(record, received)
            continue
        for key in sorted((set(sent) | set(received)) - {"model"}):
            recorded, got = (json.dumps(body.get(key, "(absent)")) for body in (sent, received))
            if recorded != got:
                differences.append(f"seq {record['seq']} {key}: recorded {recorded} != upstream {got}")
    assert not differences, "\n".join(differences)


def test_every_upstream_request_carried_the_configured_key_and_never_the_master_key(conformance):
    case = conformance["case"]
    for served in conformance["served"]:
        if case.openai_route:  # OpenAI's header
            assert served.request.headers.get("authorization") == f"Bearer {case.key}"
            assert "x-api-key" not in served.request.headers
        else:
            assert served.request.headers.get("x-api-key") == case.key
            assert "authorization" not in served.request.headers
        assert MASTER_KEY_PREFIX not in json.dumps([served.request.headers, served.request.body])
    judged = conformance["judge"]
    assert judged and {s.request.headers.get("authorization") for s in judged} == {f"Bearer {JUDGE_KEY}"}
    assert MASTER_KEY_PREFIX not in json.dumps([[s.request.headers, s.request.body] for s in judged])


def test_main_is_the_last_main_request_plus_its_response(conformance, run):
    """Message by message and field by field; an assistant message the upstream generated is
    its response as sent (thinking and signature included), also when the client's echo filled
    in an argument at its schema default; an echo the client altered otherwise is kept as sent
    and not marked generated. Through a translating route (the builtin agent's OpenAI
    chat to Anthropic) what a message says is compared: role, text, tool calls and results,
    thinking blocks; the other fields are OpenAI chat's, as the client got them."""
    if conformance["case"].openai_route:
        return assert_chat_main(conformance, run)
    (main,) = run["main"]
    call_of = call_ids(conformance, run)
    requests = main_requests(conformance["served"])
    last = max(requests, key=lambda s: len(s.request.body["messages"]))
    assert last is requests[-1]
    expected = wire_messages(last.request.body)
    for message in expected:
        message |= {"generation": False if message["role"] == "assistant" else None, "generated_by": None}
        if message["role"] != "assistant":
            continue
        for upstream in requests:
            response = wire_assistant(upstream.body["content"])
            if _same_turn(message, response, schema_defaults(last.request.body.get("tools"))):
                message |= response | {"generation": True, "generated_by": call_of[id(upstream)]}
                break
    final = wire_assistant(last.body["content"])
    expected.append(final | {"generation": True, "generated_by": call_of[id(last)]})
    actual = [merged_view(m) for m in main["messages"]]
    if conformance["scaffold"] == "builtin":

        def said(m):
            return core(m), m["thinking_blocks"], m["generation"], m["generated_by"]

        actual, expected = [said(m) for m in actual], [said(m) for m in expected]
    assert len(actual) == len(expected), actual
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got == want, f"messages[{index}]"
    assert main["call_ids"] == [m["generated_by"] for m in main["messages"] if m["generation"]]


def chat_conversation(upstream, requests: list, call_of: dict) -> list[dict]:
    """The conversation of one OpenAI chat request and its answer, as the merge should keep it:
    the messages the upstream received read as the merge README says; one equal to an answer
    of `requests` is that answer, generated by its call; the answer last."""
    expected = chat_messages(upstream.request.body["messages"])
    for message in expected:
        message |= {"generation": False if message["role"] == "assistant" else None, "generated_by": None}
        if message["role"] != "assistant":
            continue
        for earlier in requests:
            response = chat_answer(earlier.body)
            if _same_turn(message, response):
                message |= response | {"generation": True, "generated_by": call_of[id(earlier)]}
                break
    answer = chat_answer(upstream.body) | {"generation": True, "generated_by": call_of[id(upstream)]}
    return expected + [answer]


def assert_chat_main(conformance, run):
    """An OpenAI chat client on an `openai/` route: the upstream got the client's messages as
    sent, so main is them, field by field, plus the last answer."""
    (main,) = run["main"]
    call_of = call_ids(conformance, run)
    requests = chat_main_requests(conformance["served"])
    dropped = {id(s) for s in dropped_requests(conformance["served"])}
    last = max(requests, key=lambda s: len(s.request.body["messages"]))
    assert last is requests[-1]
    expected = chat_conversation(last, [s for s in requests if id(s) not in dropped], call_of)
    actual = [merged_view(m) for m in main["messages"]]
    assert len(actual) == len(expected), [(m["role"], m["content"]) for m in actual]
    differences = [
        f"messages[{index}].{key}: merged {got[key]!r} != wire {want[key]!r}"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True))
        for key in want
        if got[key] != want[key]
    ]
    assert not differences, "\n".join(differences)
    assert main["call_ids"] == [m["generated_by"] for m in main["messages"] if m["generation"]]
    # Every agent turn of the run is main's but the replies the client dropped.
    assert set(main["call_ids"]) == {call_of[id(s)] for s in requests if id(s) not in dropped}


@pytest.mark.parametrize("conformance", CHAT_CLIENTS, indirect=True)
def test_a_reply_the_client_dropped_is_an_edit_and_main_the_whole_trajectory(conformance, run):
    """mini-swe-agent drops a reply without a tool call from its history and asks again with a
    format error: that reply is an `edit` conversation (its prompt plus the reply, generated),
    main goes on without it. The other clients keep every reply: no edit."""
    dropped = dropped_requests(conformance["served"])
    assert bool(dropped) == (conformance["scaffold"] == "mini-swe-agent")
    call_of = call_ids(conformance, run)
    edits = [c for c in run["conversations"] if c["kind"] == "edit"]
    assert len(edits) == len(dropped)
    (main,) = run["main"]
    for upstream in dropped:
        (edit,) = [c for c in edits if c["call_ids"][-1] == call_of[id(upstream)]]
        expected = chat_conversation(upstream, chat_main_requests(conformance["served"]), call_of)
        got = [merged_view(m) for m in edit["messages"]]
        assert len(got) == len(expected)
        differences = [
            f"messages[{index}].{key}: merged {a[key]!r} != wire {b[key]!r}"
            for index, (a, b) in enumerate(zip(got, expected, strict=True))
            for key in b
            if a[key] != b[key]
        ]
        assert not differences, "\n".join(differences)
        assert call_of[id(upstream)] not in main["call_ids"]
        assert edit["branch_index"] == len(expected) - 1  # all of its prompt is main's too


@pytest.mark.parametrize("conformance", ANTHROPIC_ROUTE, indirect=True)
def test_every_generated_reply_is_in_main_also_when_its_echo_fills_in_a_default(conformance, run):
    """Every reply of the main agent is main's, generated. Claude Code 2.1.330 sends its Edit
    calls back with the schema's default `"replace_all": false` added: the merge compares tool
    arguments without those at their default, so such an echo is still the model's reply."""
    (main,) = run["main"]
    call_of = call_ids(conformance, run)
    requests = main_requests(conformance["served"])
    last = next(r["request"] for r in run["records"] if r["call_id"] == call_of[id(requests[-1])])
    client_sent = wire_messages(last) if "system" in last else openai_messages(last["messages"])
    echoes = [m for m in client_sent if m["role"] == "assistant"]
    in_main = {m["generated_by"] for m in main["messages"] if m["generation"]}
    altered = []
    for upstream, echo in zip(requests, echoes + [None], strict=True):
        assert call_of[id(upstream)] in in_main, call_of[id(upstream)]
        if echo is not None and core(echo) != core(wire_assistant(upstream.body["content"])):
            sent = {c["id"]: c["arguments"] for c in wire_assistant(upstream.body["content"])["tool_calls"]}
            altered += [
                (c["name"], sorted(set(c["arguments"].items()) - set(sent[c["id"]].items())))
                for c in echo["tool_calls"] or []
            ]
    assert altered in ([], [("Edit", [("replace_all", False)])] * 2), altered
    assert not [c for c in run["conversations"] if c["kind"] == "edit"]


@pytest.mark.parametrize("conformance", ANTHROPIC_ROUTE, indirect=True)  # the chat script has no thinking
def test_signed_thinking_reaches_main_as_generated(conformance, run):
    (main,) = run["main"]
    signed_turns = [m for m in main["messages"] if m["thinking_blocks"]]
    assert [b["signature"] for m in signed_turns for b in m["thinking_blocks"]] == [
        "EqQBCkYIBxgCKkDq1sig==",
        "EqQBCkYIBxgCKkDfixsig==",
        "EqQBCkYIBxgCKkDq2sig==",
    ]
    assert signed_turns[0]["generation"]
    assert signed_turns[0]["reasoning_content"].startswith("Thinking about q1")


def test_two_queries_stay_one_conversation_in_order(conformance, run):
    (main,) = run["main"]
    users = [m["content"] for m in main["messages"] if m["role"] == "user"]
    first = next(i for i, u in enumerate(users) if "/orders endpoint" in u)
    second = next(i for i, u in enumerate(users) if u.startswith("Thanks. The frontend"))
    assert first < second
    # Claude Code answers in text, the builtin agent with its `finish` tool.
    answers = [
        m["content"] or json.loads(m["tool_calls"][-1]["arguments"])["summary"]
        for m in main["messages"]
        if m["role"] == "assistant" and (m["content"] or (m["tool_calls"] or [{}])[-1].get("name") == "finish")
    ]
    assert answers[-1] == ANSWER_TWO and ANSWER_ONE in answers
    if conformance["scaffold"] != "claudecode":
        return
    roles = [m["role"] for m in main["messages"]]
    assert roles[0] == "system" and roles[2] == "system"  # the `# Environment` block stays at its place
    assert main["messages"][2]["content"].startswith("# Environment")


def test_side_calls_and_the_subagent_are_conversations_of_their_own(conformance, run):
    # With non-essential traffic off (the scaffold's QUIET_ENV) Claude Code 2.1.330 makes no title,
    # quota or count_tokens call here, so the subagent is this run's side conversation; the loop
    # covers the others for a client that makes them.
    records, conversations = run["records"], run["conversations"]
    (main,) = run["main"]
    kinds = {r["call_id"]: r["call_kind"] for r in records}
    for conversation in conversations:
        assert {kinds[c] for c in conversation["call_ids"]} == set(conversation["call_kinds"])
        if conversation["kind"] in ("title", "background"):
            assert set(conversation["call_kinds"]) == {conversation["kind"]}
    assert all(kinds[c] == "agent" for c in main["call_ids"])
    side = {c for c, kind in kinds.items() if kind != "agent"}
    in_conversations = {
        c for conv in conversations if conv["kind"] in ("title", "background") for c in conv["call_ids"]
    }
    assert side - {c for c in side if kinds[c] == "count_tokens"} == in_conversations
    # The subagent's requests (its own system prompt and first message) are its conversation,
    # linked to main by the Agent tool call that started it.
    if conformance["scaffold"] != "claudecode":
        # The builtin agent and the chat clients make no side calls; mini's dropped reply is an edit.
        edits = len(dropped_requests(conformance["served"]))
        assert sorted(c["kind"] for c in conversations) == ["edit"] * edits + ["main"]
        return
    call_of = call_ids(conformance, run)
    subagent_calls = [
        call_of[id(s)]
        for s in conformance["served"]
        if SUBAGENT_TASK in _text(s.request.body["messages"][0]["content"])
    ]
    assert subagent_calls, "Claude Code ran no subagent"
    (subagent,) = [c for c in conversations if c["kind"] == "subagent"]
    assert subagent["call_ids"] == subagent_calls
    assert subagent["parent_conversation_id"] == main["conversation_id"]
    assert subagent["parent_link"] == "tool_call"
    assert not set(subagent_calls) & set(main["call_ids"])
    assert subagent["messages"][-1]["content"] == SUBAGENT_REPORT
    every = {c for conv in conversations for c in conv["call_ids"]}
    assert every == {r["call_id"] for r in records if r["call_kind"] != "count_tokens"}


def test_rewards_and_the_release_hold_the_run(conformance, run):
    store, run_id = conformance["store"], run["row"]["run_id"]
    for table in ("rule_summary", "judge_checks", "judge_steps", "judge_summary", "trajectory_rewards"):
        rows = store.sql(f"SELECT run_id FROM {table}").column("run_id").to_pylist()
        assert rows and set(rows) == {run_id}, table
    (reward,) = store.sql("SELECT reward FROM trajectory_rewards").column("reward").to_pylist()
    assert reward is not None
    (manifest,) = conformance["home"].glob("releases/*/*/manifest.json")
    released = pq.read_table(next(manifest.parent.glob("data/trajectories/*.parquet"))).to_pylist()
    (main,) = run["main"]
    assert [(r["run_id"], r["conversation_id"]) for r in released] == [(run_id, main["conversation_id"])]

    # Content as the model gave it: null beside tool calls stays null in the release; signed
    # and redacted thinking, content parts and extra reach it byte for byte.
    def kept(m):
        return m["role"], m["content"], m["thinking_blocks"], m["content_parts"], m["extra"]

    assert [kept(m) for m in released[0]["messages"]] == [kept(m) for m in main["messages"]]


def test_no_key_anywhere_in_the_store_or_the_release(conformance):
    found = []
    for path in conformance["home"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [
                f"{path}: {secret}"
                for secret in (conformance["case"].key, JUDGE_KEY, MASTER_KEY_PREFIX)
                if secret.encode() in data
            ]
    assert not found, "\n".join(found)


def test_the_release_replays_the_run_with_fidelity_one(conformance, run):
    (replay,) = conformance["store"].sql("SELECT * FROM replays").to_pylist()
    outcome = (replay["run_id"], replay["fidelity"], replay["reproduced"])
    assert outcome == (run["row"]["run_id"], 1.0, True), (
        f"first divergence: call {replay['divergence_call_index']} at {replay['divergence_path']}: "
        f"expected {replay['divergence_expected']!r}, replayed {replay['divergence_actual']!r}"
    )
    [check] = conformance["release"].get_asset_check_evaluations()
    assert check.check_name == "sampled_runs_reproduce" and check.passed
    agent_calls = [r for r in run["records"] if r["call_kind"] != "count_tokens"]
    assert replay["recorded_calls"] == replay["matched_calls"] == len(agent_calls)
    assert replay["outcome_differences"] == [] and replay["divergence_path"] is None
    assert conformance["replayed"] == []  # the replay served recorded answers: the endpoint got nothing


@pytest.mark.parametrize("conformance", ANTHROPIC_ROUTE, indirect=True)
def test_a_branch_continues_at_the_models_endpoint_and_is_scored_and_released(conformance, run):
    """The run branched at a step (job branch_and_score): the prefix is served from the
    recording, so the endpoint receives only the continuations' live calls, with the model's
    key and never a master key; each is a live call the continuation recorded, field for field
    but model and stream (the live model is asked without streaming); what the endpoint answered
    is what was stored; the continuations are scored and the release's card counts them."""
    store, case = conformance["store"], conformance["case"]
    branches = store.sql("SELECT * FROM branch_runs ORDER BY branch_sample").to_pylist()
    assert [(b["parent_run_id"], b["error"]) for b in branches] == [(run["row"]["run_id"], None)] * 2, branches
    partition = {"model": run["row"]["model"], "instance": TASK}
    calls = store.read(BRANCH_RAW_CALLS, partition)
    merged = table_to_conversations(store.read(BRANCHED_TRAJECTORIES, partition))
    live = live_call_ids(merged, branches, calls.select(["run_id", "call_id", "seq"]).to_pylist())
    records = rebuild_records(calls, store.read(BRANCH_MESSAGE_BLOBS, partition))
    live_records = sorted((r for r in records if r["call_id"] in live), key=lambda r: r["started_at"])
    received = conformance["branch_served"]
    assert live_records and received
    for served in received:
        assert served.request.headers.get("x-api-key") == case.key and "authorization" not in served.request.headers
        assert MASTER_KEY_PREFIX not in json.dumps([served.request.headers, served.request.body])
    differences = []
    for record, upstream in pair(live_records, received):
        sent, got = record["request"], upstream.request.body
        if record["wire_format"] == "openai_chat":  # the builtin agent's calls, translated on the way
            differences += translation_differences(record, got)
            continue
        assert got["stream"] is False and got["model"] == case.route.split("/", 1)[1]
        for key in sorted((set(sent) | set(got)) - {"model", "stream"}):
            recorded, sent_on = (json.dumps(body.get(key, "(absent)")) for body in (sent, got))
            if recorded != sent_on:
                differences.append(f"seq {record['seq']} {key}: recorded {recorded} != endpoint {sent_on}")
        if record["response"] is not None:  # the answer stored as the endpoint gave it
            assert record["response"]["content"] == upstream.body["content"], record["seq"]
    assert not differences, "\n".join(differences)
    rewarded = store.sql("SELECT run_id, reward FROM branch_trajectory_rewards").to_pylist()
    assert {r["run_id"] for r in rewarded} == {b["run_id"] for b in branches}
    assert all(r["reward"] is not None for r in rewarded)
    # the scripted model answers a continuation as it answered the run: two equal continuations, no pair
    (manifest,) = conformance["home"].glob("releases/*/*/manifest.json")
    assert not any(name.startswith("branch_") for name in json.loads(manifest.read_text())["rows"])
    card = (manifest.parent / "README.md").read_text()
    assert "Branches: 1 branch points of 1 recorded runs (1.00 per branched run), 2 continuations" in card
