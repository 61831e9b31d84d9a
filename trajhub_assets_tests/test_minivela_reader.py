"""read_minivela's shortcuts: a line's repeated parts are the objects of the line before, call ids
are built from parts made once, and the blob table encodes a shared part once; every result
equals json.loads of each line, the call id formula and the table of unshared records."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.interchange.minivela import _CallDigests, _SharedLines, minivela_to_calls, read_minivela
from trajhub_assets.recording.raw_calls import build_tables
from trajhub_assets_tests.shared_data import MINIVELA

RAW = MINIVELA / "raw_benchmark-md-emoji-test-001.jsonl"

scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=15,
)


def dumps_like(value, style: int) -> str:
    """The same JSON in another layout: json's default, compact, or spaced out."""
    if style == 0:
        return json.dumps(value, ensure_ascii=False)
    if style == 1:
        return json.dumps(value, separators=(",", ":"))
    return json.dumps(value, indent=1).replace("\n", "\n \t")


@st.composite
def sessions(draw):
    """Lines of a conversation: each request repeats the history so far, now and then a line is
    copied, reformatted, broken or not an object."""
    system = draw(st.lists(json_values, max_size=2))
    tools = draw(st.lists(json_values, max_size=2))
    history, lines = [], []
    for k in range(draw(st.integers(1, 8))):
        history = history + draw(st.lists(json_values, min_size=1, max_size=2))
        if draw(st.booleans()):  # an edit: the client rewrote an earlier message
            history = [draw(json_values)] + history[1:]
        line = {
            "session_id": "s",
            "request_time": 1000 + k,
            "request_body": {"messages": history, "system": system, "tools": tools, "model": "m"},
            "response_body": {"content": draw(st.lists(json_values, max_size=2))},
        }
        if draw(st.booleans()):
            line["request_body"]["extra"] = draw(json_values)
        text = dumps_like(line, draw(st.sampled_from([0, 0, 0, 1, 2])))
        kind = draw(st.sampled_from(["ok"] * 6 + ["copy", "dup-key", "broken", "array", "trailing-comma", "spaces"]))
        if kind == "copy":
            lines.append(text)
        elif kind == "dup-key":
            text = text[:-1] + ', "request_time": 5}'
        elif kind == "broken":
            text = text[: draw(st.integers(0, len(text) - 1))]
        elif kind == "array":
            text = f"[{text}]"
        elif kind == "trailing-comma":
            text = text.replace("]", ",]", 1)
        elif kind == "spaces":
            text = f"  {text}\t "
        lines.append(text + "\n")
    return lines


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_shared_lines_are_what_json_loads_gives_or_the_same_error(lines):
    reader = _SharedLines()
    for text in lines:
        try:
            expected = json.loads(text)
        except ValueError as error:
            with pytest.raises(ValueError) as caught:
                reader.loads(text)
            assert str(caught.value) == str(error)
            continue
        got = reader.loads(text)
        assert got == expected
        # the same JSON, types and key order included
        assert json.dumps(got) == json.dumps(expected)


def test_repeated_history_is_one_object():
    history, lines = [{"role": "user", "content": "hi"}], []
    for k in range(5):
        line = {"request_time": k, "request_body": {"messages": history, "tools": [{"name": "Bash"}]}}
        lines += [json.dumps(line), json.dumps(line | {"request_time": k + 0.5})]
        history = history + [{"role": "assistant", "content": f"step {k}"}, {"role": "user", "content": "ok"}]
    reader = _SharedLines()
    parsed = [reader.loads(text) for text in lines]
    first = parsed[0]["request_body"]["messages"][0]
    assert all(p["request_body"]["messages"][0] is first for p in parsed)
    assert parsed[9]["request_body"]["messages"][3] is parsed[4]["request_body"]["messages"][3]
    assert parsed[1]["request_body"] is parsed[0]["request_body"]  # the copy: the very request
    assert all(p["request_body"]["tools"] is parsed[0]["request_body"]["tools"] for p in parsed)
    assert parsed == [json.loads(text) for text in lines]


def call_digest(request, response) -> str:
    """The call id's digest as minivela.py defines it."""
    text = json.dumps([request, response], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=5), json_values, json_values, st.dictionaries(st.text(max_size=3), json_values))
def test_call_digests_are_the_formula_s(messages, system, response, more):
    digests = _CallDigests()
    request = {"messages": messages, "system": system, **more}
    for _ in range(2):  # the second time from the parts made the first time
        assert digests.digest(request, {"content": response}) == call_digest(request, {"content": response})
        grown = request | {"messages": messages + [system]}
        assert digests.digest(grown, response) == call_digest(grown, response)
    assert digests.digest([messages], "x") == call_digest([messages], "x")  # not even objects


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(json_values, max_size=3), json_values), max_size=6))
def test_call_digests_follow_a_history_whose_last_message_changes(steps):
    """Each request's history is the one before's, its last k messages sent again otherwise (a
    client moves its cache breakpoint), then longer: the digests go on from the call before's."""
    digests, history = _CallDigests(), []
    for resent, more, response in steps:
        kept = history[: len(history) - resent] if resent else history
        history = kept + [{"again": m} for m in history[len(kept) :]] + more
        request = {"max_tokens": 10, "messages": history, "system": "s"}
        assert digests.digest(request, response) == call_digest(request, response)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(json_values, max_size=3)), max_size=6))
def test_blob_tables_of_a_history_whose_last_message_changes_are_those_of_copies(steps):
    """build_tables takes a history's first message keys from the call before's: the tables
    equal those of the same records with nothing shared."""
    records, history = [], []
    for seq, (resent, more) in enumerate(steps):
        kept = history[: max(len(history) - resent, 0)]
        history = kept + [{"again": m} for m in history[len(kept) :]] + more
        records.append(
            {
                "run_id": "m~i~0~abcd1234",
                "call_id": f"c{seq}",
                "seq": seq,
                "started_at": 1.0,
                "wire_format": "anthropic_messages",
                "call_kind": "agent",
                "status": "ok",
                "request": {"messages": history},
            }
        )
    plain = json.loads(json.dumps(records))
    for got, want in zip(build_tables(records, "m", "i"), build_tables(plain, "m", "i"), strict=True):
        assert got.equals(want)


def test_read_minivela_equals_parsing_each_line(tmp_path):
    from trajhub_assets_tests.test_secret_scan import write_minivela

    path = tmp_path / "raw.jsonl"
    write_minivela(path, 12)
    for source in (RAW, path):
        lines = source.read_text(encoding="utf-8").splitlines()
        shared = read_minivela(source, run_id="m~i~0~abcd1234")
        plain = minivela_to_calls(
            [json.loads(line) if line.strip() else None for line in lines], source=str(source), run_id="m~i~0~abcd1234"
        )
        assert shared == plain
        assert [c["call_id"] for c in shared] == [
            "mv-" + call_digest(c["request"], {"content": c["response"]["content"]})[:20] for c in plain
        ]
        # stored, shared parts give the same tables as their copies
        for got, want in zip(build_tables(shared, "m", "i"), build_tables(plain, "m", "i"), strict=True):
            assert got.equals(want)
