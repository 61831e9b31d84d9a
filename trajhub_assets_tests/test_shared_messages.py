"""normalize.SharedMessages: calls that share their history's message objects (read_minivela's
records, records rebuilt from the store) have each message normalized once, and merge into
exactly the conversations of the same records with nothing shared, where it is never used."""

from __future__ import annotations

import json

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from trajhub_assets.interchange.minivela import _SharedLines, minivela_to_calls, read_minivela
from trajhub_assets.merge import merge
from trajhub_assets.merge.normalize import SharedMessages, read_call
from trajhub_assets_tests.shared_data import MINIVELA
from trajhub_assets_tests.test_merge_properties import runs, translated_runs
from trajhub_assets_tests.test_secret_scan import write_minivela

RAW = MINIVELA / "raw_benchmark-md-emoji-test-001.jsonl"


def merged(records: list[dict]) -> list[dict]:
    return merge.merge_calls(records, model="m", instance="i", attempt=0)


def unshared(records: list[dict]) -> list[dict]:
    """The same records, no part of one the object of another: SharedMessages never finds one."""
    return json.loads(json.dumps(records))


def interned(records: list[dict]) -> list[dict]:
    """The same records with every message of equal JSON one object, wherever it is: more than a
    reader shares (the same message after other earlier ones)."""
    seen: dict[str, dict] = {}
    records = unshared(records)
    for record in records:
        for body in (record["request"], record.get("upstream_request")):
            if isinstance(body, dict) and isinstance(body.get("messages"), list):
                body["messages"] = [seen.setdefault(json.dumps(m), m) for m in body["messages"]]
    return records


@pytest.fixture
def reused(monkeypatch) -> list[int]:
    """Counts the messages SharedMessages gives back instead of reading them."""
    hits = [0]
    get = SharedMessages.get

    def counted(self, before, m):
        entry = get(self, before, m)
        hits[0] += entry is not None
        return entry

    monkeypatch.setattr(SharedMessages, "get", counted)
    return hits


def normalized(records: list[dict], shared: SharedMessages | None) -> list[tuple]:
    calls = [read_call(r, shared=shared) for r in records if r["call_kind"] != "count_tokens"]
    return [(c.prompt, c.responses, c.tools) for c in calls]


def assert_same(records: list[dict]) -> None:
    """Each call normalized with the run's SharedMessages as without, and so the merge."""
    assert normalized(records, SharedMessages()) == normalized(records, None)
    got, plain = merged(records), merged(unshared(records))
    assert got == plain
    assert json.dumps(got) == json.dumps(plain)  # key order too


def assert_same_merge(records: list[dict], reused: list[int]) -> int:
    """assert_same, and how many messages the merge of the records reused."""
    start = reused[0]
    merged(unshared(records))
    assert reused[0] == start  # nothing shared, nothing reused: the unmemoized path
    merged(records)
    hits = reused[0] - start
    assert_same(records)
    return hits


def real_session(path) -> list[str]:
    """The real recording's last call replayed as a client sends it: one call per assistant
    message of its history, each repeating the history before it, every line logged twice."""
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    last = lines[-1]
    history = last["request_body"]["messages"] + [{"role": "assistant", "content": last["response_body"]["content"]}]
    out = []
    for k, m in enumerate(history):
        if m["role"] == "assistant":
            body = last["request_body"] | {"messages": history[:k]}
            line = last | {"request_time": last["request_time"] + 1000 * k, "request_body": body}
            line["response_body"] = {"content": m["content"]}
            out += [json.dumps(line, ensure_ascii=False)] * 2
    return out


def test_the_real_recording_merges_the_same_shared_or_not(tmp_path, reused):
    calls = read_minivela(RAW, run_id="m~i~0~abcd1234")
    assert_same_merge(calls, reused)
    path = tmp_path / "replayed.jsonl"
    path.write_text("\n".join(real_session(RAW)) + "\n", encoding="utf-8")
    calls = read_minivela(path, run_id="m~i~0~abcd1234")
    assert calls[-1]["request"]["messages"][0] is calls[0]["request"]["messages"][0]
    assert assert_same_merge(calls, reused) > 0


def test_generated_recordings_merge_the_same_shared_or_not(tmp_path, reused):
    path = tmp_path / "raw.jsonl"
    write_minivela(path, 30)
    # call k repeats the 2k - 1 messages of call k - 1's history and adds two
    assert assert_same_merge(read_minivela(path, run_id="m~i~0~abcd1234"), reused) == 29**2


@settings(max_examples=150, deadline=None)
@given(st.one_of(runs(), translated_runs()))
def test_any_run_merges_the_same_with_its_equal_messages_one_object(run):
    records, _ = run
    assert_same(interned(records))


def assistant(tool_use_id: str, name: str, text: str) -> dict:
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": text, "citations": [{"cited_text": text}]},  # kept in extra
            {"type": "tool_use", "id": tool_use_id, "name": name, "input": {"cmd": text}},
        ],
    }


def result(tool_use_id: str, text: str) -> dict:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": text}]}


def breakpoint_at_end(history: list[dict]) -> list[dict]:
    """The history as Claude Code sends it: a prompt-cache breakpoint on its last block, so the
    next call sends that message again without it, other text after the same messages."""
    last = history[-1]
    blocks = [*last["content"][:-1], last["content"][-1] | {"cache_control": {"type": "ephemeral"}}]
    return [*history[:-1], last | {"content": blocks}]


@st.composite
def rewritten_sessions(draw) -> list[str]:
    """mini-vela lines of a session whose client now and then rewrites an earlier tool call
    (another tool, other text): the results after it are the same text, so the same objects
    (read_minivela shares a part with the same text at the same place), after other messages."""
    names, texts = st.sampled_from(["Bash", "Read", "Edit"]), st.sampled_from(["a", "b"])
    history, lines = [{"role": "user", "content": [{"type": "text", "text": "go"}]}], []
    for k in range(draw(st.integers(1, 8))):
        if len(history) > 1 and draw(st.booleans()):
            i = draw(st.sampled_from(range(1, len(history), 2)))
            history = [*history[:i], assistant(f"t{i}", draw(names), draw(texts)), *history[i + 1 :]]
        response = assistant(f"t{len(history)}", draw(names), draw(texts))
        body = {"model": "m", "system": [{"type": "text", "text": "sys"}], "messages": breakpoint_at_end(history)}
        line = {"session_id": "s", "request_time": 1000 * k, "request_body": body, "response_body": response}
        lines += [json.dumps(line)] * draw(st.integers(1, 2))
        history = [*history, response, result(f"t{len(history)}", draw(texts))]
    return lines


def read(lines: list[str]) -> tuple[list[dict], list[dict]]:
    """(records as read_minivela gives them: repeated parts shared, the same with nothing shared)."""
    reader = _SharedLines()
    return (
        minivela_to_calls([reader.loads(text) for text in lines], run_id="m~i~0~abcd1234"),
        minivela_to_calls([json.loads(text) for text in lines], run_id="m~i~0~abcd1234"),
    )


@settings(max_examples=300, deadline=None)
@given(rewritten_sessions())
def test_rewritten_histories_merge_the_same_shared_or_not(lines):
    shared, plain = read(lines)
    assert merged(shared) == merged(plain)
    assert_same(shared)
    assert_same(interned(plain))


class ByMessageOnly(SharedMessages):
    """A memo that forgets what came before a message: a tool result would keep the tool name
    of the first history it was read in."""

    def get(self, before, m):
        return super().get(None, m)

    def put(self, before, m, read, names):
        return super().put(None, m, read, names)


def test_the_comparisons_catch_a_memo_that_ignores_the_history_before(monkeypatch):
    first = [{"role": "user", "content": "go"}, assistant("t1", "Bash", "a"), result("t1", "done")]
    rewritten = [first[0], assistant("t1", "Read", "a"), first[2]]
    lines = [
        json.dumps({"session_id": "s", "request_time": k, "request_body": {"messages": h}, "response_body": {}})
        for k, h in enumerate([first, rewritten])
    ]
    shared, plain = read(lines)
    assert shared[1]["request"]["messages"][2] is shared[0]["request"]["messages"][2]
    assert merged(shared) == merged(plain)
    monkeypatch.setattr(merge, "SharedMessages", ByMessageOnly)
    assert merged(shared) != merged(plain)
    assert [m["name"] for c in merged(shared) for m in c["messages"] if m["role"] == "tool"] == ["Bash", "Bash"]
    # and the generated sessions find such a history by themselves
    find(
        rewritten_sessions(),
        lambda lines: merged(read(lines)[0]) != merged(read(lines)[1]),
        settings=settings(max_examples=500, database=None, deadline=None),
    )


def test_repeated_prefix_counts_only_the_very_same_objects():
    from trajhub_assets.shared_history import repeated_prefix

    a, b, c, d = {"m": 1}, {"m": 2}, {"m": 3}, {"m": 4}
    assert repeated_prefix([a, b, c], [a, b]) == 2  # the history grew
    assert repeated_prefix([a, b, d], [a, b, c]) == 2  # its last message resent changed
    assert repeated_prefix([a, b], [a, b, c]) == 2  # ... and nothing new after it
    assert repeated_prefix([a, dict(b), c], [a, b]) == 1  # an equal copy is not the same object
    assert repeated_prefix([dict(a), b, c], [a, b, c]) == 0
    assert repeated_prefix([b, a], [a, b]) == 0 and repeated_prefix([a], []) == 0
    assert repeated_prefix([a, b, c, d], [a, b, c, d, a]) == 4  # all but the last, however long
