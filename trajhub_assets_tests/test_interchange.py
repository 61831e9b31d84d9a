"""Interchange: mini-vela, ATIF and OpenAI/TRL files in and out of the store.

Round trips run on real merged trajectories: the mini-vela sample merged by our merge, and a
recorded-style run (proxy call records in three wire formats) holding tool calls, thinking,
a tool error, a failed last call, an edited history and several choices; a property test
covers any conversation the merged schema can hold. ATIF documents are checked against the
schema written from Harbor's reference models, and the spec's own example imports.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.errors import RecordError, StoreError, TrajhubError
from trajhub_assets.interchange.atif import atif_to_conversations, conversation_to_atif, validate_atif
from trajhub_assets.interchange.commands import register
from trajhub_assets.interchange.messages import chat_to_conversation, conversation_to_chat
from trajhub_assets.interchange.minivela import read_minivela
from trajhub_assets.interchange.registry import FORMATS, Format
from trajhub_assets.interchange.schema import IMPORTS
from trajhub_assets.interchange.sources import export_files, import_files
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.normalize import message, tool_call
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.pairs.pairs import chat_message
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.rewards.assets import partition_inputs
from trajhub_assets.rewards.rules import RuleContext, rule_tables
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import read_jsonl
from trajhub_assets_tests.shared_data import MINIVELA, OCTOCODINGBENCH_TASKS

RAW = MINIVELA / "raw_benchmark-md-emoji-test-001.jsonl"
RFC_EXAMPLE = Path(__file__).parent / "data" / "atif" / "rfc0001_example.json"
MV_PARTITION = {"model": "claude-sonnet-4-5-20250929", "instance": "benchmark-md-emoji-test-001"}
RUN = "demo-model~demo-task~0~0badc0de"


# -- real merged trajectories ---------------------------------------------------------------
def anthropic_call(call_id, seq, messages, content, **fields):
    request = {
        "model": "m",
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a command.",
                "input_schema": {
                    "type": "object",
                    "properties": {"cmd": {"type": "string"}},
                    "additionalProperties": False,
                },
            }
        ],
        "messages": messages,
        "max_tokens": 100,
    }
    failed = content is None
    return {
        "run_id": RUN,
        "call_id": call_id,
        "seq": seq,
        "started_at": 100.0 + seq,
        "ended_at": 100.5 + seq,
        "wire_format": "anthropic_messages",
        "call_kind": "agent",
        "request": request,
        "response": None if failed else {"content": content},
        "status": "error" if failed else "ok",
        "error": {"status_code": 529, "message": "overloaded"} if failed else None,
        **fields,
    }


def chat_record(call_id, seq, messages, choices):
    return {
        "run_id": RUN,
        "call_id": call_id,
        "seq": seq,
        "started_at": 200.0 + seq,
        "ended_at": 200.2 + seq,
        "wire_format": "openai_chat",
        "call_kind": "agent",
        "status": "ok",
        "request": {
            "messages": messages,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "Read", "description": "Read a file.", "parameters": {"type": "object"}},
                }
            ],
        },
        "response": {"choices": [{"index": i, "message": m} for i, m in enumerate(choices)]},
    }


def recorded_run() -> list[dict]:
    """Call records as the proxy writes them, in three wire formats."""
    first = [
        {"type": "thinking", "thinking": "Look first.", "signature": "c2ln"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"cmd": "ls -la"}},
    ]
    failing = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ls: permission denied", "is_error": True}],
    }
    fix = [{"role": "user", "content": "Fix the bug."}, {"role": "assistant", "content": first[1:]}, failing]
    second = [
        {"type": "text", "text": "Retrying."},
        {"type": "tool_use", "id": "t2", "name": "Bash", "input": {"cmd": "sudo ls", "n": 2}},
    ]
    history = fix + [
        {"role": "assistant", "content": second},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "a.py"}]},
    ]
    edited = [
        {"role": "user", "content": "Fix the bug."},
        {"role": "assistant", "content": [{"type": "text", "text": "Rewritten by the client."}]},
        {"role": "user", "content": "Go on."},
    ]
    chat_history = [{"role": "system", "content": "sys"}, {"role": "user", "content": "read a.py"}]
    read = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "need the file",
        "tool_calls": [{"id": "r1", "type": "function", "function": {"name": "Read", "arguments": '{"path":"a.py"}'}}],
    }
    return [
        anthropic_call("c1", 0, fix[:1], first),
        anthropic_call("c2", 1, fix, second),
        anthropic_call("c3", 2, history, None),  # failed, never retried: ends the conversation
        anthropic_call("c4", 3, edited, [{"type": "text", "text": "OK."}]),
        chat_record("o1", 4, chat_history, [read]),
        chat_record(
            "o2",
            5,
            chat_history + [read, {"role": "tool", "tool_call_id": "r1", "content": "x=1"}],
            [{"role": "assistant", "content": "x is 1"}, {"role": "assistant", "content": "one"}],
        ),
    ]


@pytest.fixture(scope="module")
def minivela_conversations():
    return merge_calls(read_minivela(RAW), model="claude-sonnet-4-5", instance="md-emoji-test-001", attempt=0)


@pytest.fixture(scope="module")
def recorded_conversations():
    conversations = merge_calls(recorded_run(), model="demo-model", instance="demo-task", attempt=0)
    kinds = [c["meta"]["kind"] for c in conversations]
    messages = [m for c in conversations for m in c["messages"]]
    # The run holds what the round trips must carry: errors, edits, reasoning, compact arguments.
    assert "edit" in kinds and any(c["meta"]["error"] for c in conversations)
    assert any(m["is_error"] for m in messages) and any(m["generation"] is False for m in messages)
    assert any(c["function"]["arguments"] == '{"path":"a.py"}' for m in messages for c in m["tool_calls"] or [])
    return conversations


@pytest.fixture(scope="module")
def wire_conversations():
    """What only the wire formats carry: a system message inside Anthropic messages, signed and
    redacted thinking, an image by reference, interleaved blocks, a null content, provider fields."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    anthropic = {
        "run_id": "wire",
        "call_id": "a1",
        "seq": 0,
        "wire_format": "anthropic_messages",
        "request": {
            "system": "sys",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "see "}, image]},
                {"role": "system", "content": "# Environment\nlinux"},
            ],
        },
        "response": {
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "ZGF0YQ=="},
                {"type": "text", "text": "A cat."},
                {"type": "thinking", "thinking": "and?", "signature": "c2lnMg=="},
                {"type": "text", "text": "Done."},
            ]
        },
        "status": "ok",
    }
    chat = {
        "run_id": "wire",
        "call_id": "o1",
        "seq": 1,
        "wire_format": "openai_chat",
        "request": {"messages": [{"role": "user", "content": "go"}]},
        "status": "ok",
        "response": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "provider_specific_fields": {"refusal": None},
                        "tool_calls": [
                            {"id": "x", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
                        ],
                    }
                }
            ]
        },
    }
    conversations = merge_calls([anthropic, chat], model="demo-model", instance="demo-task", attempt=0)
    messages = [m for c in conversations for m in c["messages"]]
    assert all(any(m[f] is not None for m in messages) for f in ("content_parts", "thinking_blocks", "extra"))
    assert any(m["content"] is None for m in messages)
    return conversations


@pytest.fixture(scope="module")
def real_conversations(minivela_conversations, recorded_conversations, wire_conversations):
    return minivela_conversations + recorded_conversations + wire_conversations


# -- ATIF -----------------------------------------------------------------------------------
def through_json(value):
    return json.loads(json.dumps(value, ensure_ascii=False))


def test_atif_export_then_import_is_the_same_conversation(real_conversations):
    for conversation in real_conversations:
        document = through_json(conversation_to_atif(conversation))
        validate_atif(document, source="export")
        assert atif_to_conversations(document) == [conversation]


def test_atif_export_uses_atif_fields_for_what_atif_can_say(minivela_conversations, recorded_conversations):
    main = minivela_conversations[1]
    document = conversation_to_atif(main, agent_name="claudecode", agent_version="2.0.0")
    assert (document["schema_version"], document["session_id"], document["trajectory_id"]) == (
        "ATIF-v1.7",
        main["meta"]["run_id"],
        main["meta"]["conversation_id"],
    )
    assert document["agent"]["tool_definitions"] == main["tools"]
    assert [s["source"] for s in document["steps"]] == ["system", "user", "agent", "agent"]
    act = document["steps"][2]
    read = main["messages"][2]
    assert act["reasoning_content"] == read["reasoning_content"] and act["message"] == read["content"]
    assert act["tool_calls"] == [
        {
            "tool_call_id": read["tool_calls"][0]["id"],
            "function_name": "Read",
            "arguments": json.loads(read["tool_calls"][0]["function"]["arguments"]),
        }
    ]
    [result] = act["observation"]["results"]
    assert result["source_call_id"] == read["tool_calls"][0]["id"]
    assert result["content"] == main["messages"][3]["content"]
    assert act["extra"] == {"trajhub": {"generated_by": read["generated_by"]}}  # all ATIF cannot say
    # A failed tool keeps Harbor's flag; a message the run did not generate is copied context.
    recorded = [conversation_to_atif(c) for c in recorded_conversations]
    results = [r for d in recorded for s in d["steps"] for r in (s.get("observation") or {}).get("results", [])]
    assert {"tool_result_is_error": True} in [r.get("extra") for r in results]
    rewritten = next(
        d
        for d, c in zip(recorded, recorded_conversations, strict=True)
        if any(m["role"] == "assistant" and m["generation"] is False for m in c["messages"])
    )
    assert [s.get("is_copied_context") for s in rewritten["steps"] if s["source"] == "agent"] == [True, None]


def test_the_spec_example_imports(store):
    [conversation] = atif_to_conversations(json.loads(RFC_EXAMPLE.read_text()), source="rfc0001_example.json")
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    act, price, volume = conversation["messages"][1:4]
    assert [c["function"]["name"] for c in act["tool_calls"]] == ["financial_search"] * 2
    assert json.loads(act["tool_calls"][1]["function"]["arguments"]) == {"ticker": "GOOGL", "metric": "volume"}
    assert (price["tool_call_id"], price["name"]) == ("call_price_1", "financial_search")
    assert volume["content"] == "GOOGL volume: 1.5M shares traded."
    assert act["reasoning_content"].startswith("The request requires two data points")
    assert conversation["meta"]["n_generations"] == 2
    assert conversation["meta"]["ended_at"] - conversation["meta"]["started_at"] == 5.0

    with pytest.raises(RecordError, match=r"rfc0001_example.json: .*pass --instance"):
        import_files(store, "atif", [RFC_EXAMPLE])
    [stored] = import_files(store, "atif", [RFC_EXAMPLE], instance="stock-price")
    assert stored.partition == {"model": "gemini-2.5-flash", "instance": "stock-price"}  # agent.model_name
    [run] = store.read(RUNS, stored.partition).to_pylist()
    assert (run["stop_reason"], run["scaffold"], run["scaffold_version"], run["tests_total"]) == (
        "imported",
        "harbor-agent",
        "1.0.0",
        None,
    )
    [origin] = store.read(IMPORTS, stored.partition).to_pylist()
    assert (origin["format_version"], origin["original_run_id"], origin["sha256"]) == (
        "ATIF-v1.4",
        "025B810F-B3A2-4C67-93C0-FE7A142A947A",
        hashlib.sha256(RFC_EXAMPLE.read_bytes()).hexdigest(),
    )
    [merged] = table_to_conversations(store.read(MERGED_TRAJECTORIES, stored.partition), **stored.partition)
    assert merged["meta"]["source"] == "atif:rfc0001_example.json" and merged["meta"]["run_id"] == run["run_id"]
    # No recorded call produced these generations: each is named after its place instead.
    generated = [m["generated_by"] for m in merged["messages"] if m["generation"]]
    assert generated == merged["meta"]["call_ids"] == [f"{run['run_id']}-c0-g0", f"{run['run_id']}-c0-g1"]


def test_embedded_subagents_become_subagent_conversations():
    document = json.loads(RFC_EXAMPLE.read_text())
    sub = {**copy.deepcopy(document), "schema_version": "ATIF-v1.7", "trajectory_id": "sub-1"}
    del sub["session_id"]  # inherits the parent's run
    nested = {**document, "schema_version": "ATIF-v1.7", "trajectory_id": "root", "subagent_trajectories": [sub]}
    root, child = atif_to_conversations(nested)
    assert (child["meta"]["kind"], child["meta"]["parent_conversation_id"], child["meta"]["run_id"]) == (
        "subagent",
        "root",
        document["session_id"],
    )
    with pytest.raises(
        RecordError, match=r"record 'subagent 1', field 'subagent_trajectories\[0\].trajectory_id': expected string"
    ):
        atif_to_conversations({**nested, "subagent_trajectories": [{**sub, "trajectory_id": None}]})


# -- OpenAI / TRL ---------------------------------------------------------------------------
def test_openai_export_then_import_is_the_same_conversation(real_conversations):
    for conversation in real_conversations:
        record = through_json(conversation_to_chat(conversation))
        assert record["messages"] == [chat_message(m) for m in conversation["messages"]]  # TRL's form
        assert record["tools"] == conversation["tools"]
        assert chat_to_conversation(record) == conversation


def test_plain_openai_records_import_with_defaults():
    record = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "type": "function", "function": {"name": "ls", "arguments": {"dir": "."}}}],
            },
            {"role": "tool", "tool_call_id": "a", "content": "x.py"},
            {"role": "assistant", "content": "x.py"},
        ],
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
    }
    conversation = chat_to_conversation(record)
    system, _, act, result, answer = conversation["messages"]
    assert (system["role"], system["content"]) == ("system", "Be brief.")
    assert act["tool_calls"][0]["function"]["arguments"] == '{"dir": "."}'
    assert (result["name"], act["generation"], answer["generation"]) == ("ls", True, True)
    assert conversation["tools"][0]["function"] == {"name": "ls", "description": "", "parameters": {"type": "object"}}


# -- any conversation the schema holds --------------------------------------------------------
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
maybe = lambda strategy: st.one_of(st.none(), strategy)  # noqa: E731
raw_arguments = st.one_of(st.sampled_from(['{"a": 1}', '{"a":1}', '{"b": [1, 2]}', "not json", "[1]", "{}", ""]), texts)


@st.composite
def any_conversation(draw):
    messages, ids = [], []
    for _ in range(draw(st.integers(1, 8))):  # merge never makes an empty conversation
        role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
        m = message(
            role,
            draw(maybe(texts)) if role == "assistant" else draw(texts),
            reasoning_content=draw(maybe(texts)) if role == "assistant" else None,
        )
        if role == "assistant":
            calls = [
                tool_call(draw(maybe(st.sampled_from(["c1", "c2", "c3"]))), draw(texts), draw(raw_arguments))
                for _ in range(draw(st.integers(0, 2)))
            ]
            ids += [c["id"] for c in calls]
            m.update(
                tool_calls=calls or None,
                generation=draw(st.booleans()),
                generated_by=draw(maybe(st.sampled_from(["call-a", "call-b"]))),
            )
        if role == "tool":
            m.update(
                tool_call_id=draw(maybe(st.sampled_from(ids + ["orphan"]))),
                name=draw(maybe(texts)),
                is_error=draw(maybe(st.booleans())),
            )
        if role == "user":
            m["name"] = draw(maybe(texts))
        messages.append(m)
    tools = [
        {
            "type": "function",
            "function": {"name": draw(texts), "description": draw(texts), "parameters": {"type": "object"}},
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    meta = {
        "conversation_id": "r-c0",
        "run_id": "r",
        "model": draw(st.sampled_from(["a__b", "m", None])),
        "instance": "i",
        "attempt": 0,
        "kind": "main",
        "parent_conversation_id": None,
        "parent_link": None,
        "branch_index": None,
        "call_ids": ["call-a"],
        "failed_call_ids": [],
        "call_kinds": ["agent"],
        "n_generations": sum(bool(m["generation"]) for m in messages),
        "started_at": 1.5,
        "ended_at": None,
        "wire_format": "openai_chat",
        "tools_changed": False,
        "error": None,
        "source": "proxy",
    }
    return {"meta": meta, "tools": tools, "messages": messages}


@settings(max_examples=300, deadline=None)
@given(any_conversation())
def test_any_conversation_survives_both_formats(conversation):
    document = through_json(conversation_to_atif(conversation))
    validate_atif(document, source="export")
    assert atif_to_conversations(document) == [conversation]
    assert chat_to_conversation(through_json(conversation_to_chat(conversation))) == conversation


# -- importing as a source ------------------------------------------------------------------
def test_minivela_import_keeps_provenance_and_merges(store, minivela_conversations):
    instance = DagsterInstance.ephemeral()
    [stored] = import_files(store, "mini-vela", [RAW], dagster_instance=instance)
    assert stored.partition == MV_PARTITION  # the request's model and the session id
    assert (stored.runs, stored.calls, stored.conversations) == (1, 3, 2)
    records = rebuild_records(store.read(RAW_CALLS, MV_PARTITION), store.read(MESSAGE_BLOBS, MV_PARTITION))
    assert [r["provenance"]["lines"] for r in records] == [[1, 2], [3, 4], [5, 6]]
    assert {r["provenance"]["file"] for r in records} == {str(RAW)}
    merged = table_to_conversations(store.read(MERGED_TRAJECTORIES, MV_PARTITION), **MV_PARTITION)
    assert [c["meta"]["kind"] for c in merged] == ["warmup", "main"]
    assert {c["meta"]["source"] for c in merged} == {f"mini-vela:{RAW.name}"}
    assert [c["messages"] for c in merged] == [c["messages"] for c in minivela_conversations]
    [run] = store.read(RUNS, MV_PARTITION).to_pylist()
    assert run["run_id"].startswith("claude-sonnet-4-5-20250929~benchmark-md-emoji-test-001~0~")
    assert (run["stop_reason"], run["resolved"], run["tests_passed"]) == ("imported", None, None)
    [origin] = store.read(IMPORTS, MV_PARTITION).to_pylist()
    assert (origin["format"], origin["file"], origin["original_run_id"], origin["lines"]) == (
        "mini-vela",
        RAW.name,
        "benchmark-md-emoji-test-001",
        [1, 2, 3, 4, 5, 6],
    )
    assert origin["sha256"] == hashlib.sha256(RAW.read_bytes()).hexdigest()
    # Dagster shows the partition with where it came from.
    assert "benchmark-md-emoji-test-001" in instance.get_dynamic_partitions("instances")
    for asset in ("raw_trajectories", "merged_trajectories"):
        event = instance.get_latest_materialization_event(AssetKey(asset))
        materialization = event.asset_materialization
        assert materialization.partition == "benchmark-md-emoji-test-001|claude-sonnet-4-5-20250929"
        assert materialization.metadata["source"].value == f"mini-vela:{RAW.name}"
    # Importing the same file again replaces its run: same run id, no copy.
    import_files(store, "mini-vela", [RAW])
    assert store.read(RUNS, MV_PARTITION).column("run_id").to_pylist() == [run["run_id"]]


def test_an_import_leaves_the_cyclic_collector_as_it_found_it(store, tmp_path):
    """import_files pauses the collector while it holds the records, and only then."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    assert gc.isenabled()
    import_files(store, "mini-vela", [RAW])
    assert gc.isenabled()
    with pytest.raises(RecordError):
        import_files(store, "mini-vela", [broken])
    assert gc.isenabled()
    gc.disable()
    try:
        import_files(store, "mini-vela", [RAW])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_imported_runs_are_scored_by_the_rules(store):
    [stored] = import_files(store, "mini-vela", [RAW])
    conversations, outcomes = partition_inputs(store, stored.partition)  # what rule_rewards reads
    task = next(
        t.record for t in read_jsonl(OCTOCODINGBENCH_TASKS) if t.record["instance_id"] == stored.partition["instance"]
    )
    steps, summary = rule_tables(conversations, outcomes, task, RuleContext())
    assert set(summary.column("run_id").to_pylist()) == set(outcomes)
    assert set(summary.column("n_steps").to_pylist()) == {2}  # the main conversation's two generations
    assert "tests_passed" not in steps.column("rule_id").to_pylist()  # no test outcome, no tests row


def test_a_partition_with_recorded_runs_is_replaced_only_when_asked(store):
    recorded = {name: None for name in RUNS.schema.names} | {"run_id": "recorded-1", "stop_reason": "finished"}
    store.write(RUNS, RUNS.schema.empty_table().from_pylist([recorded], schema=RUNS.schema), MV_PARTITION)
    with pytest.raises(StoreError, match=r"holds 1 recorded run\(s\) \(recorded-1\).*--replace"):
        import_files(store, "mini-vela", [RAW])
    assert store.table_names() == ["runs"]  # nothing else written
    assert store.read(RUNS, MV_PARTITION).column("run_id").to_pylist() == ["recorded-1"]
    import_files(store, "mini-vela", [RAW], replace=True)
    assert store.read(RUNS, MV_PARTITION).column("stop_reason").to_pylist() == ["imported"]


def test_exported_store_imports_into_another_store_unchanged(tmp_path, store, recorded_conversations):
    """A recorded partition and a mini-vela import, exported in every layout and imported into
    empty stores: the same conversations, with the import's source and provenance."""
    partition = {"model": "demo-model", "instance": "demo-task"}
    store.write(MERGED_TRAJECTORIES, conversations_to_table(recorded_conversations), partition)
    row = {name: None for name in RUNS.schema.names} | {
        "run_id": RUN,
        "stop_reason": "finished",
        "scaffold": "claudecode",
        "scaffold_version": "2.0.1",
    }
    store.write(RUNS, RUNS.schema.empty_table().from_pylist([row], schema=RUNS.schema), partition)
    import_files(store, "mini-vela", [RAW])
    originals = [
        (p, table_to_conversations(store.read(MERGED_TRAJECTORIES, p), **p)) for p in (partition, MV_PARTITION)
    ]
    layouts = [
        ("atif", tmp_path / "all.atif.jsonl"),
        ("atif", tmp_path / "atif-dir"),
        ("openai", tmp_path / "all.chat.jsonl"),
    ]
    for fmt, out in layouts:
        assert export_files(store, fmt, out) == sum(len(c) for _, c in originals) == 6
        files = sorted(out.iterdir()) if out.is_dir() else [out]
        copy_ = Store(tmp_path / f"copy-{out.name}")
        import_files(copy_, fmt, files)
        for stored, conversations in originals:
            imported = table_to_conversations(copy_.read(MERGED_TRAJECTORIES, stored), **stored)
            sources = {c["meta"].pop("source") for c in imported}
            assert sources <= {f"{fmt}:{f.name}" for f in files}
            assert imported == [
                {**c, "meta": {k: v for k, v in c["meta"].items() if k != "source"}} for c in conversations
            ]
        origins = copy_.read(IMPORTS, MV_PARTITION).to_pylist()  # a row per file the run came from
        assert len(origins) == (2 if out.is_dir() else 1) and len({o["run_id"] for o in origins}) == 1
        assert {o["original_source"] for o in origins} == {f"mini-vela:{RAW.name}"}
        [run] = copy_.read(RUNS, partition).to_pylist()
        assert (run["run_id"], run["stop_reason"]) == (RUN, "imported")
    document = json.loads((tmp_path / "atif-dir" / f"{RUN}-c0.json").read_text())
    assert (document["agent"]["name"], document["agent"]["version"]) == ("claudecode", "2.0.1")
    assert (
        export_files(store, "openai", tmp_path / "main.jsonl", kinds=["main"], models=["claude-sonnet-4-5-20250929"])
        == 1
    )


# -- bad input ------------------------------------------------------------------------------
def atif_line(**changes) -> str:
    document = json.loads(RFC_EXAMPLE.read_text())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("fmt", "name", "text", "where"),
    [
        ("atif", "t.jsonl", atif_line() + "\n" + atif_line()[:300], r"t.jsonl:2: truncated"),
        (
            "atif",
            "t.jsonl",
            atif_line(steps__1__tool_calls__0__arguments="ticker=GOOGL") + "\n",
            r"t.jsonl:1, record 'step 2', field 'steps\[1\].tool_calls\[0\].arguments': expected object, got string",
        ),
        (
            "atif",
            "t.json",
            atif_line(steps__1__observation__results__1__source_call_id="call_9"),
            r"t.json, record 'step 2', field 'steps\[1\].observation.results\[1\].source_call_id'",
        ),
        ("atif", "t.json", atif_line(steps__2__step_id=7), r"record 'step 3', field 'steps\[2\].step_id': expected 3"),
        (
            "atif",
            "t.json",
            atif_line(steps__0__reasoning_content="hm"),
            r"record 'step 1', field 'steps\[0\].reasoning_content': only an agent step",
        ),
        ("atif", "t.json", atif_line(steps__0__timestamp="yesterday"), r"field 'steps\[0\].timestamp'"),
        ("atif", "t.json", atif_line(schema_version="ATIF-v2.0"), r"field 'schema_version'"),
        (
            "openai",
            "c.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "user", "content": 5}]}\n',
            r"c.jsonl:2, record 'message 0', field 'messages\[0\].content'",
        ),
        ("openai", "c.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', r"field 'messages\[0\].role'"),
        (
            "openai",
            "c.jsonl",
            '{"messages": [{"role": "user", "content": "x"}], "trajhub": {"messages": []}}\n',
            r"field 'trajhub.messages': holds 0 entries for 1 messages",
        ),
        (
            "openai",
            "c.jsonl",
            '{"messages": [{"role": "user", "content": "key sk-ant-api03-' + "a" * 40 + '"}]}\n',
            r"c.jsonl:1, field 'messages\[0\].content': looks like a credential \(anthropic key",
        ),
    ],
    ids=[
        "atif-truncated-jsonl",
        "atif-arguments-not-object",
        "atif-result-for-unknown-call",
        "atif-step-ids-out-of-order",
        "atif-reasoning-on-user-step",
        "atif-bad-timestamp",
        "atif-unknown-version",
        "openai-content-not-text",
        "openai-unknown-role",
        "openai-overrides-misaligned",
        "openai-secret",
    ],
)
def test_bad_input_names_file_line_and_field_and_stores_nothing(tmp_path, store, fmt, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecordError, match=where):
        import_files(store, fmt, [RFC_EXAMPLE, path] if fmt == "atif" else [path], model="m", instance="i")
    assert store.table_names() == []  # the good file before the bad one was not stored either


def test_broken_minivela_file_stores_nothing(tmp_path, store):
    lines = RAW.read_text().splitlines()
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:500])
    with pytest.raises(RecordError, match=r"raw.jsonl:4: not JSON"):
        import_files(store, "mini-vela", [path])
    broken = [json.loads(line) for line in lines[:2]]
    broken[1]["response_body"] = {"content": "text, not blocks"}
    path.write_text("\n".join(json.dumps(line) for line in broken) + "\n")
    with pytest.raises(RecordError, match=r"raw.jsonl:2, field 'response_body.content'"):
        import_files(store, "mini-vela", [path])
    assert store.table_names() == []


# -- the command line ------------------------------------------------------------------------
def test_import_and_export_commands(tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    parser = argparse.ArgumentParser(prog="trajhub")
    register(parser.add_subparsers(dest="command", required=True))

    def trajhub(*argv):
        args = parser.parse_args(list(argv))
        args.func(args)
        return capsys.readouterr().out

    out = trajhub("import", "mini-vela", str(RAW), "--model", "anthropic/claude-sonnet-4-5", "--instance", "emoji")
    assert "anthropic__claude-sonnet-4-5 / emoji: 1 run(s), 2 conversation(s), 3 call(s)" in out
    assert "wrote 2 conversation(s)" in trajhub("export", "atif", "--out", str(tmp_path / "x.jsonl"))
    assert "wrote 1 conversation(s)" in trajhub(
        "export",
        "openai",
        "--out",
        str(tmp_path / "x.chat.jsonl"),
        "--model",
        "anthropic/claude-sonnet-4-5",
        "--kind",
        "main",
    )
    documents = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert [d["agent"]["model_name"] for d in documents] == ["anthropic/claude-sonnet-4-5"] * 2
    assert DagsterInstance.get().get_dynamic_partitions("models") == ["anthropic__claude-sonnet-4-5"]


# -- a new format: one entry ------------------------------------------------------------------
def _read_turns(document, *, source, line):
    return [chat_to_conversation({"messages": document["turns"]}, source=source, line=line)], {}


TURNS = Format(
    "turns",
    "turns",
    read_document=_read_turns,
    write=lambda conversation, scaffold: {"turns": conversation_to_chat(conversation)["messages"]},
)


def test_a_new_format_is_one_entry(tmp_path, store, monkeypatch, capsys):
    path = tmp_path / "run.jsonl"
    path.write_text(
        json.dumps({"turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
    )
    with pytest.raises(TrajhubError, match="unknown import format 'turns'"):
        import_files(store, "turns", [path], model="m", instance="i")
    monkeypatch.setitem(FORMATS, "turns", TURNS)
    parser = argparse.ArgumentParser(prog="trajhub")
    register(parser.add_subparsers(dest="command", required=True))  # the CLI's choices come from FORMATS
    args = parser.parse_args(["export", "turns", "--out", str(tmp_path / "out.jsonl")])
    [stored] = import_files(store, "turns", [path], model="m", instance="i")
    assert (stored.runs, stored.sources) == (1, ["turns:run.jsonl"])
    args.func(args)
    assert "wrote 1 conversation(s)" in capsys.readouterr().out
    [written] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [m["content"] for m in written["turns"]] == ["hi", "hello"]
    with pytest.raises(TrajhubError, match="the turns export is one JSONL file"):
        export_files(store, "turns", tmp_path / "out-dir")
