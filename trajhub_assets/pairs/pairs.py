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
- `trajectory`: any two rewarded runs with the same tool names. Chosen has the higher trajectory
  reward, by at least `min_margin`; exact ties are skipped, or (`ties="shorter"`) go to the run
  with fewer steps. The prompt is the longest shared prefix that ends before an assistant message
  of both; chosen/rejected are the rest of each conversation. Scaffolds put dates and paths in the
  system prompt, so when even the first context differs the chosen run's context is the prompt and
  `prompt_shared` is false: filter on it for strict pairs.
- `step`: two runs that share every message up to an index where both continue with a generated
  assistant message. Prompt = the shared prefix, chosen/rejected = those two assistant messages,
  ranked by step reward with the same margin rule. Equal (prompt, chosen, rejected) are kept once.

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
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

import pyarrow as pa

from trajhub_assets.errors import RecordError
from trajhub_assets.merge.schema import CONTENT_PART, THINKING_BLOCK
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS

log = logging.getLogger(__name__)

TIE = 1e-12  # rewards closer than this are equal
PROMPT_END_ROLES = ("user", "tool")  # TRL adds the generation prompt after these


@dataclass(frozen=True)
class PairPolicy:
    max_pairs: int = 16  # per instance and kind
    min_margin: float = 0.05
    ties: Literal["skip", "shorter"] = "skip"
    step_pairs: bool = True

    @classmethod
    def from_config(cls, release, **overrides) -> PairPolicy:
        """From ReleaseConfig; `ties`/`step_pairs` are read too once the config has them."""
        values = {
            "max_pairs": release.max_pairs_per_instance,
            "min_margin": release.min_margin,
            "ties": getattr(release, "pair_ties", "skip"),
            "step_pairs": getattr(release, "step_pairs", True),
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
        "prompt": [chat_message(m) for m in prompt],
        "chosen": [chat_message(m) for m in chosen_msgs],
        "rejected": [chat_message(m) for m in rejected_msgs],
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
    if cut is not None:
        prompt, c_rest, r_rest, prompt_shared = (
            chosen.messages[:cut],
            chosen.messages[cut:],
            rejected.messages[cut:],
            True,
        )
    else:
        prompt, c_rest, r_rest, prompt_shared = (
            chosen.messages[: chosen.first_step],
            chosen.messages[chosen.first_step :],
            rejected.messages[rejected.first_step :],
            False,
        )
        cut = chosen.first_step
    if [message_key(m) for m in c_rest] == [message_key(m) for m in r_rest]:
        stats["skipped_same_actions"] += 1  # rewards differ (flaky tests?) but the runs do not
        return None
    return _row(
        "trajectory",
        instance,
        chosen,
        rejected,
        prompt=prompt,
        chosen_msgs=c_rest,
        rejected_msgs=r_rest,
        rewards=(chosen.reward, rejected.reward),
        steps=(None, None),
        prompt_shared=prompt_shared,
        basis=basis,
        version=version,
        cut=cut,
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
    seen_steps: set[str] = set()
    for a, b in combinations(rewarded, 2):
        if a.tool_names != b.tool_names:
            stats["skipped_tools_differ"] += 1
            continue
        if (pair := _trajectory_candidate(a, b, instance, policy, stats)) is not None:
            by_kind["trajectory"].append(pair)
    if policy.step_pairs:
        for a, b in combinations(usable, 2):
            if a.tool_names != b.tool_names:
                continue
            pair = _step_candidate(a, b, instance, policy, stats)
            if pair is None:
                continue
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
