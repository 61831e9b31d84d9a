"""The one secret scanner (release/secrets.py): each distinct text searched once, a repeated
history not walked again, the same hits as the scan it replaced, and every place that scans
(import, the check after a load of proxy recordings, the release) going through it."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets import checks
from trajhub_assets.errors import RecordError
from trajhub_assets.interchange.minivela import read_minivela
from trajhub_assets.interchange.sources import import_files
from trajhub_assets.recording.raw_calls import build_tables
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.release import secrets
from trajhub_assets.release.release import build_release
from trajhub_assets.release.secrets import (
    _SECRET,
    CACHED_FROM,
    SHORTEST_MATCH,
    Hit,
    SecretLeakError,
    SecretScanner,
    is_opaque,
    scan_rows,
)
from trajhub_assets_tests.test_release import CONFIG, FAKE_KEYS, LUCKY_SIGNATURE, make_inputs

KEY = FAKE_KEYS["anthropic"]


# -- the scan it replaced, kept here as the reference ------------------------------------------
def _reference_walk(value, path):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _reference_walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _reference_walk(item, f"{path}[{i}]")


def reference_scan_rows(name, rows, start=0):
    hits = []
    for row_number, row in enumerate(rows, start=start):
        for path, text in _reference_walk(row, ""):
            if not is_opaque(path, text):
                hits.extend(
                    Hit(name, row_number, path, m.lastgroup, secrets.mask(m.group())) for m in _SECRET.finditer(text)
                )
    return hits


def test_shortest_match_is_the_patterns_own():
    assert re._parser.parse(_SECRET.pattern).getwidth()[0] == SHORTEST_MATCH


texts = st.lists(
    st.sampled_from(
        [KEY, FAKE_KEYS["github_token"], FAKE_KEYS["bearer_token"], LUCKY_SIGNATURE, "x" * CACHED_FROM, "see ", "\n"]
    ),
    max_size=4,
).map("".join)
keys = st.sampled_from(["content", "thinking_blocks", "signature", "data", "text", "thinking_blocks[0]", "a.b"])
values = st.recursive(
    st.none() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.data())
def test_same_hits_as_the_scan_it_replaced_shared_or_not(parts, data):
    """Rows built of shared parts (the same objects in several rows, at several depths and
    paths, as an import's records share their history) get the hits the old walk found."""
    rows = []
    for _ in range(data.draw(st.integers(1, 4))):
        picked = data.draw(st.lists(st.sampled_from(parts), min_size=1, max_size=4))
        rows.append(
            {
                data.draw(keys): picked,
                "nested": {"thinking_blocks": picked, "messages": [picked[0], {"signature": picked}]},
            }
        )
    expected = reference_scan_rows("t", rows, start=3)
    assert scan_rows("t", rows, start=3) == expected
    scanner = SecretScanner()
    assert scanner.rows("t", rows, start=3, shared=True) == expected
    assert scanner.rows("t", rows, start=3, shared=True) == expected  # again: all from what it found
    assert scanner.rows("t", copy.deepcopy(rows), start=3) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.lists(st.booleans(), max_size=3)), max_size=8))
def test_histories_that_grow_and_resend_their_last_messages_get_the_hits_of_the_old_walk(steps):
    """Each call's history is the one before's, its last k messages sent again as other objects
    (a client moves its cache breakpoint, or rewrites them), then new ones; any may hold a key.
    The shared scan of every call, skipping what it walked clean before, finds what the old walk finds."""

    def text(n: int, key: bool) -> dict:
        return {"role": "user", "content": f"message {n}: {KEY if key else 'nothing to see in this one'}"}

    scanner, history = SecretScanner(), []
    for resent, key_in_resent, keys_in_new in steps:
        kept = history[: max(len(history) - resent, 0)]
        again = [text(n, key_in_resent) for n in range(len(kept), len(history))]
        history = kept + again + [text(len(history) + n, key) for n, key in enumerate(keys_in_new)]
        call = {"request": {"messages": history, "system": "a system prompt long enough"}}
        assert scanner.rows("calls", [call], shared=True) == reference_scan_rows("calls", [call])


def test_a_string_or_a_list_given_alone_keeps_its_path():
    blocks = [{"type": "thinking", "signature": LUCKY_SIGNATURE}, {"type": "thinking", "signature": f"x {KEY}"}]
    scanner = SecretScanner()
    for _ in range(2):
        assert [p for p, _, _ in scanner.value(blocks, "m.thinking_blocks", shared=True)] == [
            "m.thinking_blocks[1].signature"
        ]
        assert [p for p, _, _ in scanner.value(blocks, "m.blocks", shared=True)] == [
            "m.blocks[0].signature",
            "m.blocks[1].signature",
        ]
    assert scanner.value(LUCKY_SIGNATURE, "thinking_blocks[2].data") == []
    assert [k for _, k, _ in scanner.value(LUCKY_SIGNATURE, "content")] == ["google_api_key"]


# -- a history repeated in every call ----------------------------------------------------------
def calls_sharing_a_history(n: int, secret_at: int | None = None) -> list[dict]:
    """n proxy-style call records of one conversation, each its own objects (as read_run gives
    them): call k repeats the k exchanges before it. Every text is long enough to be cached."""
    history = [{"role": "user", "content": "Fix the failing test in src/app.py, please. " * 3}]
    calls = []
    for k in range(n):
        answer = {
            "role": "assistant",
            "content": f"Step {k}: I will run the test suite of the project now, then read it.",
        }
        call = {
            "run_id": "m~i~0~abcd1234",
            "call_id": f"c{k}",
            "request": {"system": "You are a careful coding agent. " * 4, "messages": history},
            "response": {"content": [{"type": "text", "text": answer["content"]}]},
        }
        calls.append(json.loads(json.dumps(call)))
        result = f"test output of step {k}: 3 passed, 1 failed in tests/test_app.py::test_{k}"
        if k == secret_at:
            result += f" (env: ANTHROPIC_API_KEY={KEY})"
        history = history + [answer, {"role": "user", "content": result}]
    return calls


def distinct_texts(calls: list[dict]) -> set[str]:
    return {text for call in calls for _, text in _reference_walk(call, "") if len(text) >= SHORTEST_MATCH}


def test_a_secret_in_a_repeated_history_is_found_in_each_call_and_searched_once(monkeypatch):
    calls = calls_sharing_a_history(12, secret_at=2)
    searched = []
    pattern_set = secrets.scan_text
    monkeypatch.setattr(secrets, "scan_text", lambda text: searched.append(text) or pattern_set(text))
    scanner = SecretScanner()
    found = [scanner.value(call["request"], "request") for call in calls]
    # still found, under its own path, in every call that repeats it
    assert [len(hits) for hits in found] == [0, 0, 0] + [1] * 9
    assert {hits[0][0] for hits in found[3:]} == {"request.messages[6].content"}
    assert found[3][0][1] == "anthropic" and KEY not in found[3][0][2]
    # the text holding it was searched once, as was every other
    assert sum(KEY in text for text in searched) == 1
    assert sorted(searched) == sorted(set(searched))


def test_a_secret_in_a_repeated_history_is_reported_once_per_stored_blob():
    """Stored, the history is one blob per message: the check after a load names the blob once,
    not once per call that repeats it."""
    calls = calls_sharing_a_history(12, secret_at=2)
    for k, call in enumerate(calls):
        call.update(seq=k, started_at=1.0 + k, wire_format="anthropic_messages", call_kind="agent", status="ok")
    raw_calls, blobs = build_tables(calls, "m", "i")
    result = checks.no_credentials({"raw_calls": raw_calls, "message_blobs": blobs})
    assert not result.passed and result.metadata["problems"].value == 1
    assert re.search(r"message_blobs row \d+, field json: anthropic key", result.metadata["first_problems"].value)


@pytest.mark.parametrize("n", [10, 40])
def test_calls_sharing_a_history_cost_their_distinct_text(n, monkeypatch):
    """The pattern set runs over each distinct text once: what n calls cost is the distinct text
    of the conversation, not n times its history."""
    calls = calls_sharing_a_history(n)
    distinct = distinct_texts(calls)
    assert all(len(text) >= CACHED_FROM for text in distinct)  # the ids and the run id are too short to hold a key
    searched = []
    pattern_set = secrets.scan_text
    monkeypatch.setattr(secrets, "scan_text", lambda text: searched.append(text) or pattern_set(text))
    scanner = SecretScanner()
    for call in calls:
        assert scanner.value(call) == []
    assert len(searched) == scanner.texts_scanned == len(distinct) == 2 * n + 1  # system, task, answers, results
    assert scanner.chars_scanned == sum(map(len, distinct))
    repeated = sum(len(text) for call in calls for _, text in _reference_walk(call, ""))
    assert repeated > n / 4 * scanner.chars_scanned  # what the scan of every call's every text was


def test_an_imported_history_is_walked_once(tmp_path):
    """read_minivela gives the messages a file repeats as one object: the scanner of an import
    walks each distinct message once, so its work grows with the calls and their new text only."""
    walked, unshared = {}, {}
    for n in (10, 40):
        path = tmp_path / f"raw_{n}.jsonl"
        write_minivela(path, n)
        calls = read_minivela(path)
        scanner = SecretScanner()
        for call in calls:
            for key, value in call.items():
                if key != "provenance":
                    scanner.value(value, key, shared=True)
        walked[n] = scanner.walked
        # each long text once; a short one ("anthropic_messages") costs less to search again than to hash
        scanned = [
            text for call in calls for k, v in call.items() if k != "provenance" for _, text in _reference_walk(v, "")
        ]
        short = [text for text in scanned if SHORTEST_MATCH <= len(text) < CACHED_FROM]
        assert scanner.texts_scanned == len({text for text in scanned if len(text) >= CACHED_FROM}) + len(short)
        plain = SecretScanner()
        for call in json.loads(json.dumps(calls)):  # each call its own objects, as json.loads gives them
            plain.value(call, shared=True)
        unshared[n] = plain.walked
    assert walked[40] < 5 * walked[10]  # 4 times the calls: about 4 times the work
    assert unshared[40] > 8 * unshared[10]  # 16 times the history: what walking every call costs


def write_minivela(path, n: int, secret_at: int | None = None) -> None:
    """A mini-vela recording of one session of n calls, each logged twice."""
    lines = []
    for k, call in enumerate(calls_sharing_a_history(n, secret_at)):
        line = {
            "session_id": "sess-1",
            "biz_id": "",
            "request_time": 1_768_533_217_000 + 1000 * k,
            "request_body": {"model": "claude-x", "max_tokens": 100, **call["request"]},
            "response_body": call["response"],
        }
        lines += [json.dumps(line), json.dumps(line | {"request_time": line["request_time"] + 2})]
    path.write_text("\n".join(lines) + "\n")


def test_import_names_the_first_line_and_field_of_a_secret_in_a_repeated_history(tmp_path, store):
    path = tmp_path / "raw.jsonl"
    write_minivela(path, 10, secret_at=4)
    with pytest.raises(RecordError) as caught:
        import_files(store, "mini-vela", [path], model="m", instance="i")
    message = str(caught.value)
    # call 5 (lines 11 and 12) is the first to carry it; one hit in that record
    assert "raw.jsonl:11, field 'request.messages[10].content': looks like a credential (anthropic key" in message
    assert "(1 hit(s) in this record)" in message and KEY not in message
    assert store.table_names() == []


# -- one scanner everywhere ------------------------------------------------------------------
def test_import_load_and_release_all_scan_with_the_one_scanner(tmp_path, store, monkeypatch):
    """Each place that scans goes through SecretScanner, and so through the one pattern set."""
    used: list[tuple[str, int]] = []
    where = ["?"]
    text = SecretScanner.text
    monkeypatch.setattr(
        SecretScanner, "text", lambda self, value: used.append((where[0], id(self))) or text(self, value)
    )
    searched = []
    pattern_set = secrets.scan_text
    monkeypatch.setattr(secrets, "scan_text", lambda value: searched.append(where[0]) or pattern_set(value))

    where[0] = "import"
    path = tmp_path / "raw.jsonl"
    write_minivela(path, 3)
    import_files(store, "mini-vela", [path], model="m", instance="i")
    where[0] = "load"  # what raw_trajectories checks once it has loaded a batch's recordings
    partition = {"model": "m", "instance": "i"}
    tables = {name.name: store.read(name, partition) for name in (RUNS, RAW_CALLS, MESSAGE_BLOBS)}
    assert checks.no_credentials(tables).passed
    where[0] = "release"
    with pytest.raises(SecretLeakError):
        build_release(make_inputs(plant=KEY), CONFIG, tmp_path / "root")

    for place in ("import", "load", "release"):
        assert any(w == place for w, _ in used), f"{place} did not scan through SecretScanner"
        assert place in searched, f"{place} did not search with the one pattern set"
        assert len({s for w, s in used if w == place}) == 1, f"{place} used more than one scanner"


def test_a_release_searches_what_the_pairs_repeat_once():
    from trajhub_assets.release.release import release_tables

    tables = release_tables(make_inputs())
    scanner = SecretScanner()
    assert scanner.tables(tables) == []
    assert scanner.reused > 0  # the preferences repeat the trajectories' messages
    assert scanner.texts_scanned < sum(
        1 for t in tables.values() for row in t.to_pylist() for _, s in _reference_walk(row, "") if len(s) >= 15
    )


def test_scan_tables_names_table_row_and_field():
    table = pa.table({"run_id": ["a", "b"], "diff": ["+x = 1", f"+key = '{KEY}'"]})
    [hit] = secrets.scan_tables({"runs": table}, {"card.md": "fine"})
    assert str(hit).startswith("runs row 1, field diff: anthropic key")
