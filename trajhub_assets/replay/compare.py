"""Compare a replay with its recording: what the agent sent, and how the run ended.

The replayed agent got the recorded responses, so whatever it sends back is its own
doing: tool results from the sandbox, file contents, test output. Each replayed call is
paired with the recorded call it was served for (recorded.CallMatcher, in the replay's
seq order) and the two requests are compared whole (messages, system prompt, tools,
parameters) after masking (masks.py), and also raw.

Fidelity, precisely: the recorded agent calls (call_kind "agent") whose replayed request
equals the recorded one after masking, divided by the recorded agent calls plus the
replayed agent calls the recording has no counterpart for (an agent that asks for more
than was recorded scores below 1.0). 1.0 when there is nothing to compare. A request
repeats its conversation, so a divergence carries into every later call of it: the lower
the fidelity, the earlier the run went its own way. Side calls (title, background,
count_tokens) are served and compared too, and their differences counted, but do not
enter the fidelity.

First divergence: the earliest recorded agent call (in recorded order) that did not
match, as (call index among the agent calls, its seq, the path of the first difference
in the request, expected and actual excerpts there); if every recorded call matched, the
first extra call. The outcome (stop reason, final answer, test counts, resolved, diff)
is compared field by field with the recorded `runs` row, strings after masking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trajhub_assets.replay.masks import mask_text, mask_value
from trajhub_assets.replay.recorded import CallMatcher, RecordedRun, family

SCORED_CALL_KINDS = ("agent",)
OUTCOME_FIELDS = (
    "stop_reason",
    "final_answer",
    "agent_exit_code",
    "timed_out",
    "test_exit_code",
    "tests_passed",
    "tests_failed",
    "tests_total",
    "resolved",
    "diff",
    "error",
)
# Where a reader looks first in a request: the conversation, then the prompt and tools.
_FIRST_KEYS = ("messages", "input", "system", "instructions", "tools")
EXCERPT_BEFORE, EXCERPT_AFTER = 80, 160
NO_CALL_REPLAYED = "(no call: the replayed agent stopped before it)"
NO_CALL_RECORDED = "(no call: the recording ended before it)"


@dataclass(frozen=True)
class Difference:
    """Where two values first differ (a request path or an outcome field), with excerpts."""

    path: str
    expected: str
    actual: str


@dataclass(frozen=True)
class Divergence:
    call_index: int  # among the run's agent calls, in recorded order (the replay's, for an extra)
    seq: int | None  # the recorded call's seq; None for a call the recording lacks
    path: str  # where in the request the first difference is, e.g. messages[4].content
    expected: str
    actual: str

    def text(self) -> str:
        where = f"agent call {self.call_index}" + (f" (recorded seq {self.seq})" if self.seq is not None else "")
        return f"{where}, at {self.path or 'the request'}:\n{_side_by_side(self.expected, self.actual, 2)}"


def _side_by_side(expected: str, actual: str, indent: int) -> str:
    """Expected and actual excerpts, their continuation lines indented under the first."""

    def block(label: str, text: str) -> str:
        head = " " * indent + f"{label:<10}"
        return head + text.replace("\n", "\n" + " " * len(head))

    return block("expected:", expected) + "\n" + block("actual:", actual)


@dataclass
class ReplayReport:
    run_id: str
    replay_run_id: str
    attempt: int
    scaffold: str
    backend: str
    recorded_scaffold_version: str | None
    replay_scaffold_version: str | None
    recorded_calls: int  # recorded agent calls
    replayed_calls: int  # replayed agent calls
    matched_calls: int  # pairs equal after masking
    raw_matched_calls: int  # pairs equal byte for byte
    extra_calls: int  # replayed agent calls with no recorded counterpart
    side_call_differences: int  # title/background/count_tokens calls unpaired or different
    first_divergence: Divergence | None
    first_raw_difference: Divergence | None  # in a call that matched only after masking
    outcome_differences: list[Difference] = field(default_factory=list)
    error: str | None = None  # why the replayed run failed, if it did
    client_retries: int = 0  # replayed calls that failed in transport and that the client sent again

    @property
    def fidelity(self) -> float:
        denominator = self.recorded_calls + self.extra_calls
        return self.matched_calls / denominator if denominator else 1.0

    @property
    def reproduced(self) -> bool:
        return self.fidelity == 1.0 and not self.outcome_differences and self.error is None

    def text(self) -> str:
        version = self.replay_scaffold_version
        lines = [f"replay of {self.run_id} as {self.replay_run_id} ({self.scaffold} {version}, {self.backend})"]
        if version != self.recorded_scaffold_version:
            lines.append(
                f"note: recorded with {self.scaffold} {self.recorded_scaffold_version}, replayed with {version}"
            )
        lines.append(
            f"fidelity {self.fidelity:.3f}: {self.matched_calls} of {self.recorded_calls} recorded "
            f"agent calls sent the same request (masked; {self.raw_matched_calls} byte-identical)"
            + (f", {self.extra_calls} extra call(s)" if self.extra_calls else "")
            + (f", {self.client_retries} failed call(s) the client retried, not counted" if self.client_retries else "")
        )
        lines.append("first divergence: " + (self.first_divergence.text() if self.first_divergence else "none"))
        if self.first_raw_difference:
            lines.append("first raw difference hidden by the masks: " + self.first_raw_difference.text())
        if self.side_call_differences:
            lines.append(f"side calls (title, background, count_tokens) that differ: {self.side_call_differences}")
        if self.outcome_differences:
            lines.append("outcome differs:")
            lines += [f"  {d.path}:\n{_side_by_side(d.expected, d.actual, 4)}" for d in self.outcome_differences]
        else:
            lines.append("outcome: the same (stop reason, final answer, tests, diff)")
        if self.error:
            lines.append(f"replay error: {self.error}")
        lines.append("REPRODUCED" if self.reproduced else "DIVERGED")
        return "\n".join(lines)


# -- differences --------------------------------------------------------------------------
def excerpt(text: str, at: int = 0) -> str:
    start = max(0, at - EXCERPT_BEFORE)
    end = at + EXCERPT_AFTER
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


_ABSENT = object()  # a key or list item one side lacks


def _show(value) -> str:
    if value is _ABSENT:
        return "(absent)"
    return excerpt(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def first_difference(expected, actual, path: str = "") -> tuple[str, str, str] | None:
    """(path, expected excerpt, actual excerpt) at the first place two JSON values differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = [k for k in _FIRST_KEYS if k in expected or k in actual]
        keys += [k for k in [*expected, *actual] if k not in keys]
        for key in dict.fromkeys(keys):
            found = first_difference(
                expected.get(key, _ABSENT), actual.get(key, _ABSENT), f"{path}.{key}" if path else key
            )
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        for index in range(max(len(expected), len(actual))):
            found = first_difference(
                expected[index] if index < len(expected) else _ABSENT,
                actual[index] if index < len(actual) else _ABSENT,
                f"{path}[{index}]",
            )
            if found:
                return found
        return None
    if expected == actual:
        return None
    if isinstance(expected, str) and isinstance(actual, str):
        pairs = enumerate(zip(expected, actual, strict=False))  # the first difference, or where one ends
        at = next((i for i, (a, b) in pairs if a != b), min(len(expected), len(actual)))
        return path, excerpt(expected, at), excerpt(actual, at)
    return path, _show(expected), _show(actual)


def _last_message(request: dict) -> str:
    conversation = request.get("messages") or request.get("input") or []
    return excerpt(json.dumps(conversation[-1], ensure_ascii=False)) if conversation else "(empty request)"


# -- the comparison -----------------------------------------------------------------------
def _request_key(record: dict) -> str:
    return json.dumps(mask_value(record["request"]), sort_keys=True)


def client_retries(replayed: list[dict], recorded: list[dict]) -> set[int]:
    """Indices of replayed calls (in seq order) that failed and that the client at once sent again
    with the same request, where the recording has no such failure: a transport hiccup of the
    replay (the proxy could not reach the upstream), not something the agent did."""
    failed_in_recording = {_request_key(r) for r in recorded if r.get("status") != "ok"}
    return {
        index
        for index, (call, following) in enumerate(zip(replayed, replayed[1:], strict=False))
        if call.get("status") != "ok"
        and _request_key(call) == _request_key(following)
        and _request_key(call) not in failed_in_recording
    }


def pair_calls(recorded: list[dict], replayed: list[dict]) -> tuple[dict[int, int], list[int]]:
    """{recorded index: replayed index} and the replayed indices with no recorded call."""
    matcher = CallMatcher(recorded)
    pairs, extras = {}, []
    for index, record in enumerate(sorted(replayed, key=lambda r: r["seq"])):
        found = matcher.match(family(record["wire_format"], record["call_kind"]), record["request"])
        if found is None:
            extras.append(index)
        else:
            pairs[found] = index
    return pairs, extras


def compare_outcome(recorded_row: dict, replay_row: dict) -> list[Difference]:
    differences = []
    for name in OUTCOME_FIELDS:
        expected, actual = recorded_row.get(name), replay_row.get(name)
        if isinstance(expected, str) and isinstance(actual, str):
            found = first_difference(mask_text(expected), mask_text(actual), name)
        else:
            found = None if expected == actual else (name, _show(expected), _show(actual))
        if found:
            differences.append(Difference(*found))
    return differences


def compare_run(recorded: RecordedRun, replayed: list[dict], replay_row: dict) -> ReplayReport:
    """The report of a replay: its calls (the proxy's records) and its `runs` row."""
    replayed = sorted(replayed, key=lambda r: r["seq"])
    retried = client_retries(replayed, recorded.records)
    replayed = [record for index, record in enumerate(replayed) if index not in retried]
    pairs, extras = pair_calls(recorded.records, replayed)
    matched = raw_matched = side_differences = 0
    first = first_raw = None
    agent_index = 0
    for index, record in enumerate(recorded.records):
        scored = record["call_kind"] in SCORED_CALL_KINDS
        other = replayed[pairs[index]] if index in pairs else None
        if other is None:
            difference = ("", _last_message(record["request"]), NO_CALL_REPLAYED)
        else:
            difference = first_difference(mask_value(record["request"]), mask_value(other["request"]))
        if not scored:
            side_differences += difference is not None
            continue
        if difference is None:
            matched += 1
            raw = first_difference(record["request"], other["request"])
            if raw is None:
                raw_matched += 1
            elif first_raw is None:
                first_raw = Divergence(agent_index, record["seq"], *raw)
        elif first is None:
            first = Divergence(agent_index, record["seq"], *difference)
        agent_index += 1
    extra_agent = [replayed[i] for i in extras if replayed[i]["call_kind"] in SCORED_CALL_KINDS]
    side_differences += len(extras) - len(extra_agent)
    if first is None and extra_agent:
        paired_agent = sum(1 for i in pairs.values() if replayed[i]["call_kind"] in SCORED_CALL_KINDS)
        first = Divergence(paired_agent, None, "", NO_CALL_RECORDED, _last_message(extra_agent[0]["request"]))
    row = recorded.row
    return ReplayReport(
        run_id=recorded.run_id,
        replay_run_id=replay_row["run_id"],
        attempt=row["attempt"],
        scaffold=row["scaffold"],
        backend=replay_row["backend"],
        recorded_scaffold_version=row.get("scaffold_version"),
        replay_scaffold_version=replay_row.get("scaffold_version"),
        recorded_calls=agent_index,
        replayed_calls=sum(r["call_kind"] in SCORED_CALL_KINDS for r in replayed),
        matched_calls=matched,
        raw_matched_calls=raw_matched,
        extra_calls=len(extra_agent),
        side_call_differences=side_differences,
        first_divergence=first,
        first_raw_difference=first_raw,
        outcome_differences=compare_outcome(row, replay_row),
        error=replay_row.get("error"),
        client_retries=len(retried),
    )


def reports_rows(reports: list[ReplayReport]) -> list[dict]:
    """One row per replay for the UI: fidelity, first divergence, outcome."""

    def divergence(r: ReplayReport) -> str:
        first = r.first_divergence
        return f"call {first.call_index} at {first.path or 'the request'}" if first else "none"

    return [
        {
            "run": r.run_id,
            "fidelity": round(r.fidelity, 3),
            "first_divergence": divergence(r),
            "outcome_differs_in": ", ".join(d.path for d in r.outcome_differences) or "same",
        }
        for r in reports
    ]
