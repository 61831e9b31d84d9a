"""preference_pairs: DPO pairs among the trajectories of one instance, across models and attempts.

Inputs, all for one instance (`preference_pairs` reads every model's partition of it):
- trajectories: the main conversation of each run, as `merge` returns it:
  {"meta": {run_id, model, instance, attempt, conversation_id, ...}, "tools": [...], "messages": [...]}.
- trajectory_rewards: rows with `run_id`, `reward` and, when the table has it, `reward_version`
  (TRAJECTORY_REWARDS rows: the version is then read from their weights).
- step_rewards: rows with `run_id`, `step_index`, `step_reward` (and `conversation_id`, used to
  keep only the main conversation's steps when present). Step k is the k-th assistant message
  with `generation` true in the main conversation.

Two kinds of pair:
- `trajectory`: two rewarded runs with the same tool names. Chosen has the higher trajectory
  reward, by at least `min_margin`; exact ties are skipped, or (`ties="shorter"`) go to the run
  with fewer steps. The prompt is the longest shared prefix that ends before an assistant message
  of both; chosen/rejected are the rest of each conversation. Scaffolds put dates and paths in the
  system prompt, so when even the first context differs the chosen run's context is the prompt and
  `prompt_shared` is false: filter on it for strict pairs.
- `step`: two runs that share every message up to an index where both continue with a generated
  assistant message. Prompt = the shared prefix, chosen/rejected = those two assistant messages,
  ranked by step reward with the same margin rule. Equal (prompt, chosen, rejected) are kept once.

Candidates are bounded: each run is compared with at most `candidates_per_run` (K) others per
kind (release.pair_candidates_per_run), so an instance costs O(runs x K), not O(runs^2). A run
takes its partners from the other models in turn (a random start, a random attempt of each),
its own model's other attempts last, seeded by the instance and the run: re-runs pick the same
pairs. With at most K + 1 runs every pair is compared. Step partners are found by hashing
message prefixes (runs that share the prefix before a step meet in one bucket), not by
comparing runs two by two. `compared_trajectory` / `compared_step` count the comparisons.

Each kind keeps at most `max_pairs` pairs, picked greedily so that every model appears about as
often as the others (then every run, then the larger margin first).

Messages leave in TRL's conversational form: role, content (null where the wire sent null),
reasoning_content, tool_calls in OpenAI form, tool_call_id, name, and the merge's
thinking_blocks (signatures and redacted data byte for byte), content_parts and extra
(CHAT_MESSAGE_DOCS says what each holds). The internal flags (generation, is_error,
generated_by) are dropped; message keys compare content and tool calls, not tool-call ids,
reasoning or thinking, which clients regenerate or drop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import pyarrow as pa

from trajhub_assets.branching.schema import BRANCH_PAIRS
from trajhub_assets.errors import RecordError
from trajhub_assets.merge.schema import CONTENT_PART, THINKING_BLOCK
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.replay.masks import mask_value

log = logging.getLogger(__name__)

TIE = 1e-12  # rewards closer than this are equal
PROMPT_END_ROLES = ("user", "tool")  # TRL adds the generation prompt after these


@dataclass(frozen=True)
class PairPolicy:
    max_pairs: int = 16  # per instance and kind
    min_margin: float = 0.05
    ties: Literal["skip", "shorter"] = "skip"
    step_pairs: bool = True
    candidates_per_run: int = 8  # at most this many partners per run and kind (_Comparisons, _partners)

    @classmethod
    def from_config(cls, release, **overrides) -> PairPolicy:
        """From ReleaseConfig; `ties`/`step_pairs` are read too once the config has them."""
        values = {
            "max_pairs": release.max_pairs_per_instance,
            "min_margin": release.min_margin,
            "ties": getattr(release, "pair_ties", "skip"),
            "step_pairs": getattr(release, "step_pairs", True),
            "candidates_per_run": release.pair_candidates_per_run,
        }
        return cls(**(values | overrides))


@dataclass
class PairResult:
    table: pa.Table
    stats: dict = field(default_factory=dict)


# -- messages --------------------------------------------------------------------------------
def chat_tool_call(call: Mapping) -> dict:
    """OpenAI form; accepts the merged table's flat form (name/arguments beside id) too."""
    function = call.get("function") or {"name": call.get("name"), "arguments": call.get("arguments")}
    return {
        "id": call.get("id"),
        "type": call.get("type") or "function",
        "function": {"name": function.get("name"), "arguments": function.get("arguments")},
    }


def _structs(items: list | None, struct: pa.StructType) -> list[dict] | None:
    """Each item with exactly the struct's keys, so rows read back equal to rows written."""
    names = [f.name for f in struct]
    return None if items is None else [{name: item.get(name) for name in names} for item in items]


def chat_message(message: Mapping) -> dict:
    """A merged message as TRL expects it, internal flags dropped; content, thinking, parts and
    extra are the merge's, unchanged (a null content stays null)."""
    calls = message.get("tool_calls")
    return {
        "role": message["role"],
        "content": message.get("content"),
        "reasoning_content": message.get("reasoning_content"),
        "tool_calls": [chat_tool_call(c) for c in calls] if calls else None,
        "tool_call_id": message.get("tool_call_id"),
        "name": message.get("name"),
        "thinking_blocks": _structs(message.get("thinking_blocks"), THINKING_BLOCK),
        "content_parts": _structs(message.get("content_parts"), CONTENT_PART),
        "extra": message.get("extra"),
    }


def _canonical_arguments(arguments: str | None) -> str | None:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return arguments


def message_key(message: Mapping) -> str:
    """What makes two messages the same turn: not ids or reasoning (regenerated or dropped)."""
    calls = [chat_tool_call(c)["function"] for c in message.get("tool_calls") or []]
    return json.dumps(
        [
            message["role"],
            message.get("content") or "",
            message.get("name"),
            [[c["name"], _canonical_arguments(c["arguments"])] for c in calls],
        ],
        ensure_ascii=False,
    )


def tools_json(tools: list) -> str:
    return json.dumps(tools, ensure_ascii=False, sort_keys=True)


# -- runs ------------------------------------------------------------------------------------
@dataclass
class _Run:
    run_id: str
    model: str
    attempt: int
    messages: list[dict]
    keys: list[str]
    tools: list
    tool_names: tuple[str, ...]
    reward: float | None
    reward_version: str | None
    step_of: dict[int, int]  # message index -> step index, for generated assistant messages
    step_rewards: dict[int, float]

    @property
    def first_step(self) -> int | None:
        return min(self.step_of) if self.step_of else None

    @property
    def n_steps(self) -> int:
        return len(self.step_of)


def reward_version(row: Mapping) -> str:
    """The row's reward_version (TRAJECTORY_REWARDS has one); rows from elsewhere without one
    are named by their weights, if they carry any."""
    if row.get("reward_version"):
        return str(row["reward_version"])
    weights = [
        f"{key.removeprefix('weight_')}={value:g}"
        for key, value in sorted(row.items())
        if key.startswith("weight_") and value is not None
    ]
    return "weights:" + ",".join(weights) if weights else "unversioned"


def _runs(
    trajectories: Iterable[dict], trajectory_rewards: Iterable[Mapping], step_rewards: Iterable[Mapping]
) -> tuple[str | None, list[_Run]]:
    rewards = {r["run_id"]: r for r in trajectory_rewards}
    steps: dict[str, dict[int, float]] = {}
    conversation_of: dict[str, str | None] = {}
    runs, instance = [], None
    for t in trajectories:
        meta = t.get("meta") or {}
        for name in ("run_id", "model", "instance"):
            if not meta.get(name):
                raise RecordError(
                    "trajectory meta lacks it",
                    source="trajectories",
                    record_id=meta.get("conversation_id"),
                    field=f"meta.{name}",
                )
        if instance is not None and meta["instance"] != instance:
            raise RecordError(
                f"pairs are made within one instance, got {instance!r} and {meta['instance']!r}",
                source="trajectories",
                record_id=meta["run_id"],
                field="meta.instance",
            )
        instance = meta["instance"]
        if meta["run_id"] in conversation_of:
            raise RecordError(
                "two trajectories of one run: pass only each run's main conversation",
                source="trajectories",
                record_id=meta["run_id"],
                field="meta.run_id",
            )
        conversation_of[meta["run_id"]] = meta.get("conversation_id")
        step_of, k = {}, 0
        for i, m in enumerate(t["messages"]):
            if m["role"] == "assistant" and m.get("generation"):
                step_of[i], k = k, k + 1
        row = rewards.get(meta["run_id"], {})
        runs.append(
            _Run(
                run_id=meta["run_id"],
                model=meta["model"],
                attempt=int(meta.get("attempt") or 0),
                messages=t["messages"],
                keys=[message_key(m) for m in t["messages"]],
                tools=t.get("tools") or [],
                tool_names=tuple(sorted(tool["function"]["name"] for tool in t.get("tools") or [])),
                reward=row.get("reward"),
                reward_version=reward_version(row) if row else None,
                step_of=step_of,
                step_rewards=steps.setdefault(meta["run_id"], {}),
            )
        )
    for s in step_rewards:
        conversation = conversation_of.get(s["run_id"])
        if (
            s["run_id"] in steps
            and s.get("step_reward") is not None
            and (s.get("conversation_id") is None or conversation is None or s["conversation_id"] == conversation)
        ):
            steps[s["run_id"]][int(s["step_index"])] = float(s["step_reward"])
    return instance, sorted(runs, key=lambda r: (r.model, r.attempt, r.run_id))


def _same_version(a: _Run, b: _Run, instance: str) -> str:
    if a.reward_version != b.reward_version:
        # Rewards of different versions are not comparable: a margin between them means nothing.
        raise RecordError(
            f"runs {a.run_id!r} and {b.run_id!r} were scored with reward versions "
            f"{a.reward_version!r} and {b.reward_version!r}; rescore before pairing",
            source="trajectory_rewards",
            record_id=instance,
            field="reward_version",
        )
    return a.reward_version


def _divergence(a: _Run, b: _Run) -> int:
    n = min(len(a.keys), len(b.keys))
    return next((i for i in range(n) if a.keys[i] != b.keys[i]), n)


def _rank(
    a: _Run, b: _Run, ra: float, rb: float, policy: PairPolicy, stats: Counter, allow_shorter: bool
) -> tuple[_Run, _Run, str] | None:
    """(chosen, rejected, basis), or None when the rewards do not separate the two."""
    if abs(ra - rb) <= TIE:
        if allow_shorter and policy.ties == "shorter" and a.n_steps != b.n_steps:
            return (a, b, "tie:shorter") if a.n_steps < b.n_steps else (b, a, "tie:shorter")
        stats["skipped_tie"] += 1
        return None
    if abs(ra - rb) < policy.min_margin:
        stats["skipped_below_margin"] += 1
        return None
    return (a, b, "reward") if ra > rb else (b, a, "reward")


def _pair_id(kind: str, chosen: _Run, rejected: _Run, cut: int) -> str:
    return hashlib.sha256(f"{kind}|{chosen.run_id}|{rejected.run_id}|{cut}".encode()).hexdigest()[:20]


def _row(
    kind: str,
    instance: str,
    chosen: _Run,
    rejected: _Run,
    *,
    prompt: list,
    chosen_msgs: list,
    rejected_msgs: list,
    rewards: tuple[float, float],
    steps: tuple[int | None, int | None],
    prompt_shared: bool,
    basis: str,
    version: str,
    cut: int,
) -> dict:
    return {
        "pair_id": _pair_id(kind, chosen, rejected, cut),
        "kind": kind,
        "instance_id": instance,
        # The merged messages; in TRL's form only once picked (_in_chat_form): most candidates are not.
        "prompt": prompt,
        "chosen": chosen_msgs,
        "rejected": rejected_msgs,
        "tools_json": tools_json(chosen.tools),
        "chosen_run_id": chosen.run_id,
        "rejected_run_id": rejected.run_id,
        "chosen_model": chosen.model,
        "rejected_model": rejected.model,
        "chosen_attempt": chosen.attempt,
        "rejected_attempt": rejected.attempt,
        "chosen_reward": rewards[0],
        "rejected_reward": rewards[1],
        "margin": rewards[0] - rewards[1],
        "chosen_trajectory_reward": chosen.reward,
        "rejected_trajectory_reward": rejected.reward,
        "chosen_step_index": steps[0],
        "rejected_step_index": steps[1],
        "prompt_shared": prompt_shared,
        "basis": basis,
        "reward_version": version,
    }


# -- candidates ------------------------------------------------------------------------------
def _trajectory_candidate(a: _Run, b: _Run, instance: str, policy: PairPolicy, stats: Counter) -> dict | None:
    ranked = _rank(a, b, a.reward, b.reward, policy, stats, allow_shorter=True)
    if ranked is None:
        return None
    chosen, rejected, basis = ranked
    version = _same_version(chosen, rejected, instance)
    shared = _divergence(chosen, rejected)
    # The longest shared prefix that ends right before an assistant message of both runs.
    cut = next(
        (
            i
            for i in range(min(shared, len(chosen.messages) - 1, len(rejected.messages) - 1), 0, -1)
            if chosen.messages[i]["role"] == rejected.messages[i]["role"] == "assistant"
            and chosen.messages[i - 1]["role"] in PROMPT_END_ROLES
        ),
        None,
    )
    prompt_shared = cut is not None
    c_start, r_start = (cut, cut) if prompt_shared else (chosen.first_step, rejected.first_step)
    if chosen.keys[c_start:] == rejected.keys[r_start:]:
        stats["skipped_same_actions"] += 1  # rewards differ (flaky tests?) but the runs do not
        return None
    return _row(
        "trajectory",
        instance,
        chosen,
        rejected,
        prompt=chosen.messages[:c_start],
        chosen_msgs=chosen.messages[c_start:],
        rejected_msgs=rejected.messages[r_start:],
        rewards=(chosen.reward, rejected.reward),
        steps=(None, None),
        prompt_shared=prompt_shared,
        basis=basis,
        version=version,
        cut=c_start,
    )


def _step_candidate(a: _Run, b: _Run, instance: str, policy: PairPolicy, stats: Counter) -> dict | None:
    d = _divergence(a, b)
    if (
        d == 0
        or d >= min(len(a.messages), len(b.messages))
        or d not in a.step_of
        or d not in b.step_of
        or a.messages[d - 1]["role"] not in PROMPT_END_ROLES
    ):
        return None  # no shared prefix, no divergence, or not at a step of both
    ra, rb = a.step_rewards.get(a.step_of[d]), b.step_rewards.get(b.step_of[d])
    if ra is None or rb is None:
        stats["skipped_step_unrewarded"] += 1
        return None
    ranked = _rank(a, b, ra, rb, policy, stats, allow_shorter=False)
    if ranked is None:
        return None
    chosen, rejected, _ = ranked
    version = _same_version(chosen, rejected, instance)
    rewards = (ra, rb) if chosen is a else (rb, ra)
    return _row(
        "step",
        instance,
        chosen,
        rejected,
        prompt=chosen.messages[:d],
        chosen_msgs=[chosen.messages[d]],
        rejected_msgs=[rejected.messages[d]],
        rewards=rewards,
        steps=(chosen.step_of[d], rejected.step_of[d]),
        prompt_shared=True,
        basis="reward",
        version=version,
        cut=d,
    )


def _by_tools(runs: list[_Run]) -> list[list[_Run]]:
    """Runs grouped by their tool names (only runs offered the same tools are paired)."""
    groups: dict[tuple[str, ...], list[_Run]] = {}
    for run in runs:
        groups.setdefault(run.tool_names, []).append(run)
    return list(groups.values())


def _by_model(runs: Iterable[_Run]) -> dict[str, list[_Run]]:
    pool: dict[str, list[_Run]] = {}
    for run in runs:
        pool.setdefault(run.model, []).append(run)
    return dict(sorted(pool.items()))


class _Comparisons:
    """The run pairs of one kind to compare, each run in at most k of them (so at most
    runs * k / 2 per instance), kept as positions in run order."""

    def __init__(self, runs: list[_Run], k: int):
        self.index = {run.run_id: i for i, run in enumerate(runs)}
        self.k, self.degree, self.pairs = k, Counter(), set()

    def _pair(self, a: _Run, b: _Run) -> tuple[int, int]:
        return tuple(sorted((self.index[a.run_id], self.index[b.run_id])))

    def room(self, run: _Run) -> int:
        return self.k - self.degree[run.run_id]

    def open(self, run: _Run, other: _Run) -> bool:
        return self.room(other) > 0 and self._pair(run, other) not in self.pairs

    def add(self, run: _Run, others: list[_Run]) -> None:
        for other in others:
            self.pairs.add(self._pair(run, other))
            self.degree.update((run.run_id, other.run_id))


def _partners(
    run: _Run, pool: Mapping[str, list[_Run]], k: int, rng: random.Random, eligible: Callable[[_Run], bool]
) -> list[_Run]:
    """Up to k `eligible` runs of `pool` (model -> runs) for `run` to be compared with, `run` excluded.

    The other models take turns from a random start, each turn a run of each (from a random
    offset in its list, without repeats), so partners spread over models; the run's own
    model's other attempts come only after every other model's runs. Picking costs about
    O(k + models), not O(runs), unless `eligible` turns most runs down.
    """
    if k <= 0:
        return []
    others = [m for m in pool if m != run.model]
    start = rng.randrange(len(others)) if others else 0
    picked: list[_Run] = []
    for models in (others[start:] + others[:start], [run.model] if run.model in pool else []):
        offsets: dict[str, int] = {}
        for turn in range(max((len(pool[m]) for m in models), default=0)):
            for model in models:
                runs = pool[model]
                if turn >= len(runs):
                    continue
                if model not in offsets:
                    offsets[model] = rng.randrange(len(runs))
                other = runs[(offsets[model] + turn) % len(runs)]
                if other is not run and eligible(other):
                    picked.append(other)
                    if len(picked) == k:
                        return picked
    return picked


def _prefix_hashes(run: _Run) -> list[bytes]:
    """hashes[i]: a digest of the message keys before index i; equal hashes, equal prefixes."""
    hashes, digest = [], b""
    for key in run.keys:
        hashes.append(digest)
        digest = hashlib.blake2b(digest + key.encode(), digest_size=16).digest()
    return hashes


def _step_comparisons(runs: list[_Run], instance: str, comparisons: _Comparisons) -> None:
    """Pairs of runs that share a prefix and diverge at a generated step of both.

    Runs are bucketed by (tools, prefix hash) at each of their steps that follows a user or
    tool message, so runs sharing a prefix are found in one pass over the messages; within a
    bucket, runs whose next message differs diverge exactly there. Each run takes partners
    from its buckets, the longest shared prefix first, while it has room.
    """
    buckets: dict[tuple, list[_Run]] = {}
    positions: dict[str, list[tuple]] = {}
    for run in runs:
        hashes = _prefix_hashes(run)
        for d in run.step_of:
            if d > 0 and run.messages[d - 1]["role"] in PROMPT_END_ROLES:
                key = (run.tool_names, d, hashes[d])
                buckets.setdefault(key, []).append(run)
                positions.setdefault(run.run_id, []).append(key)
    pools = {key: _by_model(members) for key, members in buckets.items() if len(members) > 1}
    for run in runs:
        rng = random.Random(f"{instance}|step|{run.run_id}")
        for key in sorted((key for key in positions.get(run.run_id, ()) if key in pools), key=lambda key: -key[1]):
            d, mine = key[1], run.keys[key[1]]
            found = _partners(
                run,
                pools[key],
                comparisons.room(run),
                rng,
                lambda other, d=d, mine=mine, run=run: other.keys[d] != mine and comparisons.open(run, other),
            )
            comparisons.add(run, found)


def _in_chat_form(row: dict) -> dict:
    return row | {side: [chat_message(m) for m in row[side]] for side in ("prompt", "chosen", "rejected")}


def select_fairly(candidates: list[dict], limit: int) -> list[dict]:
    """Greedy: next the pair whose models, then runs, have been used least; then larger margin."""
    model_uses: Counter = Counter()
    run_uses: Counter = Counter()
    left = sorted(candidates, key=lambda c: c["pair_id"])
    picked = []
    while left and len(picked) < limit:
        best = min(
            left,
            key=lambda c: (
                max(model_uses[c["chosen_model"]], model_uses[c["rejected_model"]]),
                model_uses[c["chosen_model"]] + model_uses[c["rejected_model"]],
                run_uses[c["chosen_run_id"]] + run_uses[c["rejected_run_id"]],
                -c["margin"],
                c["pair_id"],
            ),
        )
        left.remove(best)
        picked.append(best)
        for side in ("chosen", "rejected"):
            model_uses[best[f"{side}_model"]] += 1
            run_uses[best[f"{side}_run_id"]] += 1
    return picked


def preference_pairs(
    trajectories: Iterable[dict],
    trajectory_rewards: Iterable[Mapping],
    step_rewards: Iterable[Mapping],
    policy: PairPolicy = PairPolicy(),
) -> PairResult:
    """PREFERENCE_PAIRS rows for one instance, and counts of what was paired and skipped."""
    instance, runs = _runs(trajectories, trajectory_rewards, step_rewards)
    stats: Counter = Counter(trajectories=len(runs))
    usable = []
    for run in runs:
        if run.first_step is None:
            stats["skipped_no_step"] += 1
        else:
            usable.append(run)
    rewarded = [r for r in usable if r.reward is not None]
    stats["skipped_unrewarded"] = len(usable) - len(rewarded)

    by_kind: dict[str, list[dict]] = {"trajectory": [], "step": []}
    same_tools = _by_tools(rewarded)
    # Counted, not enumerated: pairs of rewarded runs that were offered different tools.
    if differ := math.comb(len(rewarded), 2) - sum(math.comb(len(g), 2) for g in same_tools):
        stats["skipped_tools_differ"] = differ
    trajectory = _Comparisons(usable, policy.candidates_per_run)
    for group in same_tools:
        pool = _by_model(group)
        for run in group:
            rng = random.Random(f"{instance}|trajectory|{run.run_id}")
            trajectory.add(run, _partners(run, pool, trajectory.room(run), rng, partial(trajectory.open, run)))
    stats["compared_trajectory"] = len(trajectory.pairs)
    for i, j in sorted(trajectory.pairs):  # in run order, as all pairs were compared before
        if (pair := _trajectory_candidate(usable[i], usable[j], instance, policy, stats)) is not None:
            by_kind["trajectory"].append(pair)
    if policy.step_pairs:
        step, seen_steps = _Comparisons(usable, policy.candidates_per_run), set()
        _step_comparisons(usable, instance, step)
        stats["compared_step"] = len(step.pairs)
        for i, j in sorted(step.pairs):  # in run order: the first of equal step pairs stays
            pair = _step_candidate(usable[i], usable[j], instance, policy, stats)
            if pair is None:
                continue
            pair = _in_chat_form(pair)  # step rows are short: a prefix and one message each side
            same = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
            if same in seen_steps:
                stats["skipped_step_duplicate"] += 1
                continue
            seen_steps.add(same)
            by_kind["step"].append(pair)

    rows = []
    for kind, candidates in by_kind.items():
        stats[f"candidates_{kind}"] = len(candidates)
        picked = select_fairly(candidates, policy.max_pairs)
        if kind == "trajectory":
            picked = [_in_chat_form(row) for row in picked]
        stats[f"pairs_{kind}"] = len(picked)
        rows.extend(picked)
    rows.sort(
        key=lambda r: (
            r["kind"] != "trajectory",
            r["chosen_model"],
            r["chosen_run_id"],
            r["rejected_run_id"],
            r["pair_id"],
        )
    )
    coverage = Counter(r[f"{side}_model"] for r in rows for side in ("chosen", "rejected"))
    log.info(
        "instance %s: %d trajectory and %d step pairs from %d runs",
        instance,
        stats["pairs_trajectory"],
        stats["pairs_step"],
        len(runs),
    )
    return PairResult(
        pa.Table.from_pylist(rows, schema=PREFERENCE_PAIRS.schema),
        {**dict(stats), "model_coverage": dict(sorted(coverage.items()))},
    )


# -- branch pairs ----------------------------------------------------------------------------
BRANCH_STEP, BRANCH_CONTINUATION = "branch_step", "branch_continuation"
BRANCH_STATS = (
    "continuations",
    "points",
    "skipped_failed",
    "skipped_unrewarded",
    "skipped_tie",
    "skipped_below_margin",
    "skipped_same_actions",
    "skipped_prefix_differs",
    "skipped_step_not_a_turn",
    f"pairs_{BRANCH_STEP}",
    f"pairs_{BRANCH_CONTINUATION}",
    "chosen_by_tests",  # per pair of continuations (each has one branch_continuation row)
    "chosen_by_reward",
)


def _outcome(row: Mapping) -> tuple[bool, float]:
    """What ranks two continuations first: resolved, then (neither resolved) the share of tests
    passed. Two resolved continuations are equal here, however many tests each one's run found."""
    if row.get("resolved"):
        return True, 1.0
    return False, (row.get("tests_passed") or 0) / row["tests_total"] if row.get("tests_total") else 0.0


def _evidence(row: Mapping, hits: list[Mapping], steps: range) -> dict:
    return {
        "resolved": row.get("resolved"),
        "tests_passed": row.get("tests_passed"),
        "tests_total": row.get("tests_total"),
        "rule_hits": [
            {"step_index": h["step_index"], "rule_id": h["rule_id"], "value": h["value"]}
            for h in hits
            if h["step_index"] is not None and h["step_index"] in steps
        ],
    }


def _message_of_step(run: _Run, step: int) -> int | None:
    return next((i for i, s in run.step_of.items() if s == step), None)


def _branch_rows(
    a: _Run, b: _Run, instance: str, point: tuple[str, int], rows: Mapping, hits: Mapping, policy, stats: Counter
) -> list[dict]:
    """The branch_step and branch_continuation rows of two continuations of one branch point."""
    parent, k = point
    if (oa := _outcome(rows[a.run_id])) != (ob := _outcome(rows[b.run_id])):
        chosen, rejected, basis = (a, b, "tests") if oa > ob else (b, a, "tests")
    elif a.reward is None or b.reward is None:
        stats["skipped_unrewarded"] += 1
        return []
    elif (ranked := _rank(a, b, a.reward, b.reward, policy, stats, allow_shorter=False)) is None:
        return []
    else:
        chosen, rejected, basis = ranked
    if chosen.keys == rejected.keys:
        stats["skipped_same_actions"] += 1  # outcomes differ (flaky tests?) but the continuations do not
        return []
    # Step k's message: at the same index in both, after the recorded prefix both were served.
    start, d = _message_of_step(chosen, k), _divergence(chosen, rejected)
    if start is None or start != _message_of_step(rejected, k) or d < start:
        stats["skipped_prefix_differs"] += 1
        return []
    version = _same_version(chosen, rejected, instance)
    at_turn = d in chosen.step_of and d in rejected.step_of and chosen.messages[d - 1]["role"] in PROMPT_END_ROLES
    if not at_turn:
        stats["skipped_step_not_a_turn"] += 1  # they first differ in a tool's answer, not the model's
    out = []
    for kind, cut, held in (
        (BRANCH_STEP, d, lambda run: range(run.step_of[d], run.step_of[d] + 1)),
        (BRANCH_CONTINUATION, start, lambda run: range(k, run.n_steps)),
    ):
        if kind == BRANCH_STEP and not at_turn:
            continue
        end = cut + 1 if kind == BRANCH_STEP else None
        pair = _row(
            kind,
            instance,
            chosen,
            rejected,
            prompt=chosen.messages[:cut],
            chosen_msgs=chosen.messages[cut:end],
            rejected_msgs=rejected.messages[cut:end],
            rewards=(chosen.reward, rejected.reward),
            steps=(chosen.step_of[d], rejected.step_of[d]) if kind == BRANCH_STEP else (k, k),
            prompt_shared=True,
            basis=basis,
            version=version,
            cut=cut,
        )
        evidence = {
            f"{side}_{name}": value
            for side, run in (("chosen", chosen), ("rejected", rejected))
            for name, value in _evidence(rows[run.run_id], hits.get(run.run_id, []), held(run)).items()
        }
        out.append(_in_chat_form(pair) | {"parent_run_id": parent, "branch_step": k} | evidence)
    return out


def branch_pairs(
    continuations: Iterable[dict],
    branch_runs: Iterable[Mapping],
    trajectory_rewards: Iterable[Mapping],
    step_rewards: Iterable[Mapping],
    rule_hits: Iterable[Mapping],
    policy: PairPolicy = PairPolicy(),
) -> PairResult:
    """BRANCH_PAIRS rows for one (model, instance): every two continuations of one branch point.

    continuations: their main conversations (as merge returns them); branch_runs: their
    BRANCH_RUNS rows (parent_run_id, branch_step, resolved, tests_passed, error, ...); rewards as
    preference_pairs takes them; rule_hits: RULE_STEPS rows. A refused or failed continuation
    is left out. Chosen is the continuation that resolved the task, else passed a larger share of
    its tests, else has the higher trajectory reward by `min_margin` (`basis`: tests or reward). The prompt is the
    shared prefix (compared after the replay's masks, as the branch verified it; the chosen side's
    messages): up to their first differing assistant turn for `branch_step` (chosen/rejected:
    that turn), up to step k for `branch_continuation` (chosen/rejected: the rest of each). Each
    side's outcome and the rule hits of the steps it holds go in the row.
    """
    rows = {row["run_id"]: row for row in branch_runs}
    continuations = list(continuations)
    usable = [t for t in continuations if (row := rows.get(t["meta"]["run_id"])) and row.get("error") is None]
    stats: Counter = Counter(dict.fromkeys(BRANCH_STATS, 0))  # every count, zero or not: the UI's rows line up
    stats.update(continuations=len(continuations), skipped_failed=len(continuations) - len(usable))
    instance, runs = _runs(usable, trajectory_rewards, step_rewards)
    for run in runs:  # compared as the branch's prefix was verified: after the replay's masks (sandbox paths, dates)
        run.keys = [message_key(mask_value(m)) for m in run.messages]
    main = {t["meta"]["run_id"]: t["meta"].get("conversation_id") for t in usable}
    hits: dict[str, list[Mapping]] = {}
    for hit in rule_hits:
        if hit["run_id"] in main and hit.get("conversation_id") in (None, main[hit["run_id"]]):
            hits.setdefault(hit["run_id"], []).append(hit)
    points: dict[tuple[str, int], list[_Run]] = {}
    for run in runs:
        points.setdefault((rows[run.run_id]["parent_run_id"], rows[run.run_id]["branch_step"]), []).append(run)
    out = []
    for point, group in sorted(points.items()):
        stats["points"] += 1
        for a, b in itertools.combinations(group, 2):  # `samples` per point: a handful
            out.extend(_branch_rows(a, b, instance, point, rows, hits, policy, stats))
    for row in out:
        stats[f"pairs_{row['kind']}"] += 1
        if row["kind"] == BRANCH_CONTINUATION:
            stats[f"chosen_by_{row['basis']}"] += 1
    out.sort(key=lambda r: (r["parent_run_id"], r["branch_step"], r["kind"], r["pair_id"]))
    return PairResult(pa.Table.from_pylist(out, schema=BRANCH_PAIRS.schema), dict(stats))
