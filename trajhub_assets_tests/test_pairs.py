"""preference_pairs: ranking, margins, ties, fair selection, step pairs and TRL's format."""

import base64
import hashlib
import json
from collections import Counter

import pytest

from trajhub_assets.errors import RecordError
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.schema import conversations_to_table, table_to_conversations
from trajhub_assets.pairs.pairs import PairPolicy, branch_pairs, preference_pairs
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "run a command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }
]


def msg(role, content="", **extra):
    base = {
        "role": role,
        "content": content,
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "is_error": None,
        "generation": role == "assistant",
    }
    return base | extra


def call(cmd, call_id):
    return {"id": call_id, "type": "function", "function": {"name": "shell", "arguments": json.dumps({"cmd": cmd})}}


def trajectory(
    run_id, model, attempt, commands, system="You are a coding agent.", final="done", id_prefix=None, act_content=""
):
    """system, user, then one (assistant tool call, tool result) step per command, then a final answer."""
    messages = [msg("system", system), msg("user", "fix the bug")]
    for k, cmd in enumerate(commands):
        call_id = f"{id_prefix or run_id}-{k}"
        messages.append(msg("assistant", act_content, tool_calls=[call(cmd, call_id)]))
        messages.append(
            msg("tool", f"output of {cmd}", tool_call_id=call_id, name="shell", is_error=False, generation=False)
        )
    messages.append(msg("assistant", final))
    return {
        "meta": {
            "run_id": run_id,
            "model": model,
            "instance": "inst-1",
            "attempt": attempt,
            "conversation_id": f"{run_id}-c0",
            "kind": "main",
        },
        "tools": TOOLS,
        "messages": messages,
    }


def reward(run_id, value, version="v1"):
    return {
        "run_id": run_id,
        "reward": value,
        "outcome": 1.0,
        "step_mean": 0.5,
        "checklist_pass_rate": 1.0,
        "reward_version": version,
    }


def assert_trl_preference(row: dict) -> None:
    """TRL's conversational preference format, checked as documented (trl is not installed here:
    it pulls torch). Uses trl's own helpers when it is."""
    assert {"prompt", "chosen", "rejected"} <= set(row)
    for column in ("prompt", "chosen", "rejected"):
        assert isinstance(row[column], list) and row[column], column
        for m in row[column]:
            assert isinstance(m, dict) and isinstance(m["role"], str)
            # null only where the model sent null (OpenAI-style tool-call turns); TRL templates take both
            assert isinstance(m["content"], str) or (m["content"] is None and m["role"] == "assistant")
            assert "generation" not in m and "is_error" not in m
            for c in m.get("tool_calls") or []:
                assert c["type"] == "function" and isinstance(c["function"]["name"], str)
                json.loads(c["function"]["arguments"])
    # apply_chat_template adds the generation prompt after a user or tool turn
    assert row["prompt"][-1]["role"] in ("user", "tool")
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    try:
        from trl import is_conversational, maybe_extract_prompt
    except ImportError:
        return
    assert is_conversational(row)
    assert maybe_extract_prompt(row) is row or maybe_extract_prompt(row) == row


def test_trajectory_pairs_rank_by_reward_with_a_margin():
    runs = [
        trajectory("r1", "m-a", 0, ["ls"]),
        trajectory("r2", "m-b", 0, ["cat x"]),
        trajectory("r3", "m-c", 0, ["pwd"]),
    ]
    result = preference_pairs(
        runs,
        [reward("r1", 0.9), reward("r2", 0.5), reward("r3", 0.48)],
        [],
        PairPolicy(min_margin=0.05, step_pairs=False),
    )
    rows = result.table.to_pylist()
    assert {(r["chosen_run_id"], r["rejected_run_id"]) for r in rows} == {("r1", "r2"), ("r1", "r3")}
    assert result.stats["skipped_below_margin"] == 1
    for r in rows:
        assert r["chosen_reward"] > r["rejected_reward"] and r["margin"] == pytest.approx(
            r["chosen_reward"] - r["rejected_reward"]
        )
        assert r["kind"] == "trajectory" and r["instance_id"] == "inst-1" and r["reward_version"] == "v1"
        assert r["prompt_shared"] and [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert r["chosen"][0]["tool_calls"][0]["function"]["name"] == "shell"
        assert json.loads(r["tools_json"]) == TOOLS
        assert_trl_preference(r)
    assert result.table.schema == PREFERENCE_PAIRS.schema


def test_ties_are_skipped_or_go_to_the_shorter_run():
    runs = [trajectory("r1", "m-a", 0, ["ls", "ls -la"]), trajectory("r2", "m-a", 1, ["ls"])]
    rewards = [reward("r1", 0.7), reward("r2", 0.7)]
    skipped = preference_pairs(runs, rewards, [], PairPolicy(min_margin=0.0, step_pairs=False))
    assert skipped.table.num_rows == 0 and skipped.stats["skipped_tie"] == 1
    shorter = preference_pairs(runs, rewards, [], PairPolicy(min_margin=0.05, ties="shorter", step_pairs=False))
    [row] = shorter.table.to_pylist()
    assert (row["chosen_run_id"], row["basis"], row["margin"]) == ("r2", "tie:shorter", 0.0)


def test_at_most_n_pairs_cover_models_evenly():
    runs, rewards = [], []
    for m, model in enumerate(["m-a", "m-b", "m-c"]):
        for attempt in range(2):
            run_id = f"{model}-{attempt}"
            runs.append(trajectory(run_id, model, attempt, [f"cmd {run_id}"]))
            rewards.append(reward(run_id, 0.1 + 0.3 * m + 0.1 * attempt))  # m-c always best
    result = preference_pairs(runs, rewards, [], PairPolicy(max_pairs=3, min_margin=0.05, step_pairs=False))
    assert result.table.num_rows == 3
    coverage = result.stats["model_coverage"]
    assert coverage == {"m-a": 2, "m-b": 2, "m-c": 2}, coverage
    # same inputs, same pairs in the same order
    again = preference_pairs(list(reversed(runs)), rewards, [], PairPolicy(max_pairs=3, step_pairs=False))
    assert again.table.equals(result.table)


def test_step_pairs_at_the_divergence_of_a_shared_prefix():
    # Same first step (tool-call ids differ: clients make them up), different second step.
    a = trajectory("r1", "m-a", 0, ["ls", "pytest"], id_prefix="toolu_x")
    b = trajectory("r2", "m-a", 1, ["ls", "rm -rf build"], id_prefix="toolu_y")
    steps = [
        {"run_id": "r1", "step_index": 0, "step_reward": 0.5},
        {"run_id": "r1", "step_index": 1, "step_reward": 0.9},
        {"run_id": "r2", "step_index": 0, "step_reward": 0.5},
        {"run_id": "r2", "step_index": 1, "step_reward": 0.2},
    ]
    result = preference_pairs([a, b], [reward("r1", 0.8), reward("r2", 0.3)], steps, PairPolicy(min_margin=0.1))
    [step] = [r for r in result.table.to_pylist() if r["kind"] == "step"]
    assert (step["chosen_run_id"], step["chosen_step_index"], step["rejected_step_index"]) == ("r1", 1, 1)
    assert (step["chosen_reward"], step["rejected_reward"]) == (0.9, 0.2)
    assert step["chosen_trajectory_reward"] == 0.8
    assert [m["role"] for m in step["prompt"]] == ["system", "user", "assistant", "tool"]
    assert step["prompt"][2]["tool_calls"][0]["id"] == "toolu_x-0"  # the chosen run's own ids
    assert len(step["chosen"]) == len(step["rejected"]) == 1
    assert json.loads(step["chosen"][0]["tool_calls"][0]["function"]["arguments"]) == {"cmd": "pytest"}
    assert_trl_preference(step)
    # the trajectory pair starts where the runs part too, so its prompt is the same shared prefix
    [whole] = [r for r in result.table.to_pylist() if r["kind"] == "trajectory"]
    assert whole["prompt"] == step["prompt"] and whole["prompt_shared"]
    assert [m["role"] for m in whole["chosen"]] == ["assistant", "tool", "assistant"]
    assert_trl_preference(whole)


def test_step_pairs_skip_steps_without_reward_or_margin():
    a = trajectory("r1", "m-a", 0, ["ls"])
    b = trajectory("r2", "m-b", 0, ["pwd"])
    close = [
        {"run_id": "r1", "step_index": 0, "step_reward": 0.50},
        {"run_id": "r2", "step_index": 0, "step_reward": 0.52},
    ]
    result = preference_pairs([a, b], [reward("r1", 0.5), reward("r2", 0.5)], close, PairPolicy(min_margin=0.05))
    assert result.table.num_rows == 0
    missing = preference_pairs([a, b], [], close[:1], PairPolicy())
    assert missing.stats["skipped_step_unrewarded"] == 1 and missing.stats["skipped_unrewarded"] == 2


def test_differing_system_prompts_pair_with_the_chosen_context_marked_unshared():
    a = trajectory("r1", "m-a", 0, ["ls"], system="Today is Monday.")
    b = trajectory("r2", "m-b", 0, ["pwd"], system="Today is Tuesday.")
    result = preference_pairs([a, b], [reward("r1", 0.2), reward("r2", 0.9)], [], PairPolicy())
    [row] = result.table.to_pylist()
    assert row["chosen_run_id"] == "r2" and not row["prompt_shared"]
    assert row["prompt"][0]["content"] == "Today is Tuesday."
    assert_trl_preference(row)


def test_runs_with_other_tools_or_no_step_are_not_paired():
    a = trajectory("r1", "m-a", 0, ["ls"])
    b = trajectory("r2", "m-b", 0, ["ls"]) | {"tools": []}
    c = trajectory("r3", "m-c", 0, []) | {"messages": [msg("system", "s"), msg("user", "u")]}
    result = preference_pairs([a, b, c], [reward("r1", 0.9), reward("r2", 0.1), reward("r3", 0.0)], [], PairPolicy())
    assert result.table.num_rows == 0
    assert result.stats["skipped_tools_differ"] == 1 and result.stats["skipped_no_step"] == 1


def test_mixed_reward_versions_are_an_error():
    runs = [trajectory("r1", "m-a", 0, ["ls"]), trajectory("r2", "m-b", 0, ["pwd"])]
    with pytest.raises(RecordError, match="reward versions 'v1' and 'v2'"):
        preference_pairs(runs, [reward("r1", 0.9), reward("r2", 0.1, version="v2")], [], PairPolicy())


def test_trajectory_rewards_table_rows_name_their_version_by_weights():
    runs = [trajectory("r1", "m-a", 0, ["ls"]), trajectory("r2", "m-b", 0, ["pwd"])]
    rows = [
        {"run_id": r, "reward": v, "weight_outcome": 0.5, "weight_step": 0.25, "weight_checklist": 0.25}
        for r, v in (("r1", 0.9), ("r2", 0.2))
    ]
    [row] = preference_pairs(runs, rows, [], PairPolicy(step_pairs=False)).table.to_pylist()
    assert row["reward_version"] == "weights:checklist=0.25,outcome=0.5,step=0.25"


def test_bad_trajectory_names_the_field():
    bad = trajectory("r1", "m-a", 0, ["ls"])
    del bad["meta"]["model"]
    with pytest.raises(RecordError, match="meta.model"):
        preference_pairs([bad], [], [], PairPolicy())


def test_pairs_fit_the_store(store):
    runs = [trajectory("r1", "m-a", 0, ["ls"]), trajectory("r2", "m-b", 0, ["pwd"])]
    table = preference_pairs(runs, [reward("r1", 0.9), reward("r2", 0.1)], [], PairPolicy()).table
    store.write(PREFERENCE_PAIRS, table, {"instance": "inst-1"})
    back = store.read(PREFERENCE_PAIRS, {"instance": "inst-1"})
    assert back.to_pylist() == table.to_pylist()
    assert Counter(store.sql("SELECT instance FROM preference_pairs").column(0).to_pylist()) == {"inst-1": 1}


def test_policy_from_release_config():
    from trajhub_assets.config import ReleaseConfig

    policy = PairPolicy.from_config(ReleaseConfig(max_pairs_per_instance=4, min_margin=0.2), ties="shorter")
    assert (policy.max_pairs, policy.min_margin, policy.ties, policy.step_pairs) == (4, 0.2, "shorter", True)


def test_runs_that_act_alike_are_not_a_pair():
    # Same actions, different rewards (a flaky test): nothing to prefer.
    runs = [trajectory("r1", "m-a", 0, ["ls"], id_prefix="x"), trajectory("r2", "m-a", 1, ["ls"], id_prefix="y")]
    result = preference_pairs(runs, [reward("r1", 1.0), reward("r2", 0.0)], [], PairPolicy())
    assert result.table.num_rows == 0 and result.stats["skipped_same_actions"] == 1


# -- what the merge keeps beyond OpenAI's fields ----------------------------------------------
def opaque(seed: str, repeat: int = 4) -> str:
    """Base64 like a signature or redacted thinking: long, with + / and = in it."""
    return base64.b64encode(hashlib.sha512(seed.encode()).digest() * repeat + b"\xfb\xff").decode()


def claude_trajectory(run_id, model, attempt, commands):
    """One recorded Anthropic run, merged: each step is signed thinking, a text block with a citation
    (kept in extra), redacted thinking and a tool call (the order kept in content_parts)."""
    tools = [
        {
            "name": "shell",
            "description": "run a command",
            "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        }
    ]
    history, calls = [{"role": "user", "content": "fix the bug"}], []
    replies = [
        [
            {"type": "thinking", "thinking": f"Try {cmd}.", "signature": opaque(f"sig {cmd}")},
            {"type": "text", "text": f"Running {cmd}.", "citations": [{"type": "char_location", "cited_text": cmd}]},
            {"type": "redacted_thinking", "data": opaque(f"data {cmd}", repeat=40)},
            {"type": "tool_use", "id": f"toolu_{run_id}_{k}", "name": "shell", "input": {"cmd": cmd}},
        ]
        for k, cmd in enumerate(commands)
    ] + [[{"type": "text", "text": "done"}]]
    for seq, reply in enumerate(replies):
        calls.append(
            {
                "run_id": run_id,
                "call_id": f"{run_id}-c{seq}",
                "seq": seq,
                "started_at": 1.0 + seq,
                "ended_at": 1.5 + seq,
                "wire_format": "anthropic_messages",
                "call_kind": "agent",
                "status": "ok",
                "response": {"content": reply},
                "request": {
                    "model": model,
                    "system": "You are a coding agent.",
                    "tools": tools,
                    "messages": list(history),
                    "max_tokens": 100,
                },
            }
        )
        if seq < len(commands):
            history += [
                {"role": "assistant", "content": reply},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": reply[-1]["id"], "content": f"output of {commands[seq]}"}
                    ],
                },
            ]
    [conversation] = merge_calls(calls, model=model, instance="inst-1", attempt=attempt)
    # as the pairs and release assets read it: through the merged_trajectories table
    [conversation] = table_to_conversations(conversations_to_table([conversation]), model=model, instance="inst-1")
    return conversation


def kept_fields(message):
    return {k: message.get(k) for k in ("content", "thinking_blocks", "content_parts", "extra")}


def test_thinking_signatures_parts_and_extra_survive_into_pairs(store):
    a = claude_trajectory("r1", "claude-a", 0, ["ls", "pytest"])
    b = claude_trajectory("r2", "claude-b", 0, ["ls", "rm -rf build"])
    act = a["messages"][2]
    assert [t["type"] for t in act["thinking_blocks"]] == ["thinking", "redacted_thinking"]
    assert act["thinking_blocks"][0]["signature"] == opaque("sig ls")  # what the wire sent
    assert act["thinking_blocks"][1]["data"] == opaque("data ls", repeat=40)
    assert act["content_parts"] and json.loads(act["extra"])["content[1].citations"]
    steps = [
        {"run_id": r, "step_index": k, "step_reward": v}
        for r, k, v in [("r1", 0, 0.5), ("r1", 1, 0.9), ("r2", 0, 0.5), ("r2", 1, 0.2)]
    ]
    table = preference_pairs([a, b], [reward("r1", 0.8), reward("r2", 0.3)], steps, PairPolicy(min_margin=0.1)).table
    store.write(PREFERENCE_PAIRS, table, {"instance": "inst-1"})
    rows = store.read(PREFERENCE_PAIRS, {"instance": "inst-1"}).to_pylist()
    assert rows == table.to_pylist()  # through Parquet unchanged
    assert sorted(r["kind"] for r in rows) == ["step", "trajectory"]
    for row in rows:
        assert_trl_preference(row)
        chosen_run, rejected_run = (a, b) if row["chosen_run_id"] == "r1" else (b, a)
        shown = row["prompt"] + row["chosen"]
        assert [kept_fields(m) for m in shown] == [kept_fields(m) for m in chosen_run["messages"][: len(shown)]]
        start = len(row["prompt"])
        assert [kept_fields(m) for m in row["rejected"]] == [
            kept_fields(m) for m in rejected_run["messages"][start : start + len(row["rejected"])]
        ]
    [step] = [r for r in rows if r["kind"] == "step"]
    assert step["chosen"][0]["thinking_blocks"][0]["signature"] == opaque("sig pytest")
    assert step["rejected"][0]["thinking_blocks"][1]["data"] == opaque("data rm -rf build", repeat=40)
    assert step["prompt"][2]["thinking_blocks"][0]["signature"] == opaque("sig ls")


def test_null_content_stays_null_in_pairs(store):
    runs = [trajectory("r1", "m-a", 0, ["ls"], act_content=None), trajectory("r2", "m-b", 0, ["pwd"], act_content=None)]
    table = preference_pairs(runs, [reward("r1", 0.9), reward("r2", 0.1)], [], PairPolicy()).table
    store.write(PREFERENCE_PAIRS, table, {"instance": "inst-1"})
    [row] = store.read(PREFERENCE_PAIRS, {"instance": "inst-1"}).to_pylist()
    assert row["chosen"][0]["content"] is None and row["rejected"][0]["content"] is None
    assert row["chosen"][-1]["content"] == "done" and row["prompt"][0]["content"] == "You are a coding agent."
    assert_trl_preference(row)


# -- bounded candidates: each run compared with at most candidates_per_run others ----------------
def many_runs(models: int, attempts: int):
    """Runs of one instance with the same tools, all different (so all pairs differ in actions),
    distinct rewards and rewarded steps; every run diverges from every other at its first step."""
    runs, rewards, steps = [], [], []
    for m in range(models):
        for attempt in range(attempts):
            run_id = f"m{m:02d}-{attempt}"
            runs.append(trajectory(run_id, f"m-{m:02d}", attempt, [f"cmd {run_id}", "pytest"]))
            rewards.append(reward(run_id, (m * attempts + attempt) / (models * attempts)))
            steps += [{"run_id": run_id, "step_index": k, "step_reward": rewards[-1]["reward"]} for k in (0, 1)]
    return runs, rewards, steps


def compared(result, kind):
    """The compared pairs of one kind as (model, model) pairs, from a result that kept them all."""
    return [(r["chosen_model"], r["rejected_model"]) for r in result.table.to_pylist() if r["kind"] == kind]


def everything(k):
    """A policy under which every compared pair becomes a row (no margin, no limit)."""
    return PairPolicy(max_pairs=10**6, min_margin=0.0, candidates_per_run=k)


def test_candidates_per_instance_are_bounded_by_runs_times_k():
    runs, rewards, steps = many_runs(models=10, attempts=3)
    result = preference_pairs(runs, rewards, steps, everything(4))
    for kind in ("trajectory", "step"):
        # 30 runs: all pairs would be 435; each run is in at most 4 comparisons
        assert 0 < result.stats[f"compared_{kind}"] <= 30 * 4 // 2
        assert result.stats[f"candidates_{kind}"] == result.stats[f"compared_{kind}"]
        rows = [r for r in result.table.to_pylist() if r["kind"] == kind]
        per_run = Counter(r[f"{side}_run_id"] for r in rows for side in ("chosen", "rejected"))
        assert max(per_run.values()) <= 4
    unbounded = preference_pairs(runs, rewards, steps, everything(10**6))
    assert unbounded.stats["compared_trajectory"] == unbounded.stats["compared_step"] == 30 * 29 // 2


def test_candidates_spread_over_every_model():
    runs, rewards, steps = many_runs(models=12, attempts=3)
    result = preference_pairs(runs, rewards, steps, everything(4))
    for kind in ("trajectory", "step"):
        pairs = compared(result, kind)
        models = Counter(model for pair in pairs for model in pair)
        assert set(models) == {f"m-{m:02d}" for m in range(12)}  # every model is compared
        assert max(models.values()) <= 2 * min(models.values())  # and about as often as the others
        # other models before a model's own attempts: no pair within one model while others have room
        assert all(a != b for a, b in pairs)
        partners = {m: {b if a == m else a for a, b in pairs if m in (a, b)} for m in models}
        assert all(len(p) >= 4 for p in partners.values())  # each model meets several others


def test_candidates_are_the_same_on_every_run():
    runs, rewards, steps = many_runs(models=8, attempts=3)
    first = preference_pairs(runs, rewards, steps, everything(3))
    again = preference_pairs(list(reversed(runs)), list(reversed(rewards)), steps, everything(3))
    assert again.table.equals(first.table)
    assert again.stats == first.stats and first.stats["compared_trajectory"] < 24 * 23 // 2


def test_few_runs_are_all_compared_as_before():
    # with at most k + 1 runs every run has room for every other: all pairs, as before the bound
    for models, attempts in ((3, 1), (2, 2), (5, 1), (3, 3)):
        runs, rewards, steps = many_runs(models, attempts)
        n = models * attempts
        bounded = preference_pairs(runs, rewards, steps, PairPolicy(candidates_per_run=max(n - 1, 1)))
        unbounded = preference_pairs(runs, rewards, steps, PairPolicy(candidates_per_run=10**6))
        assert bounded.table.equals(unbounded.table)
        assert bounded.stats == unbounded.stats
        assert bounded.stats["compared_trajectory"] == bounded.stats["compared_step"] == n * (n - 1) // 2


def test_the_asset_reads_the_main_runs_of_every_model_of_its_instance_only(store):
    import pyarrow as pa

    from trajhub_assets.merge.schema import MERGED_TRAJECTORIES
    from trajhub_assets.pairs.assets import instance_inputs
    from trajhub_assets.rewards.schema import TRAJECTORY_REWARDS

    assert instance_inputs(store, "inst-1") == ([], [], [])  # nothing stored yet
    for instance in ("inst-1", "inst-2"):
        for model in ("claude-a", "claude-b"):
            run_id = f"{model}@{instance}"
            main = claude_trajectory(run_id, model, 0, ["ls"])
            side = main | {"meta": main["meta"] | {"conversation_id": f"{run_id}-title", "kind": "title"}}
            partition = {"model": model, "instance": instance}
            store.write(MERGED_TRAJECTORIES, conversations_to_table([main, side]), partition)
            row = {name: None for name in TRAJECTORY_REWARDS.schema.names} | {
                "run_id": run_id,
                **{f"weight_{c}": 0.25 for c in ("outcome", "rules", "step", "checklist")},
                "components": ["outcome"],
                "reward": 0.5,
                "reward_version": "v1",
            }
            store.write(TRAJECTORY_REWARDS, pa.Table.from_pylist([row], schema=TRAJECTORY_REWARDS.schema), partition)
    trajectories, rewards, steps = instance_inputs(store, "inst-1")
    assert sorted((t["meta"]["run_id"], t["meta"]["kind"]) for t in trajectories) == [
        ("claude-a@inst-1", "main"),
        ("claude-b@inst-1", "main"),
    ]
    assert sorted(r["run_id"] for r in rewards) == ["claude-a@inst-1", "claude-b@inst-1"]
    assert steps == []  # no judge_steps table yet: no step rewards, not an error


# -- branch pairs: continuations of one recorded run from one step ---------------------------
def branch_run(run_id, parent="p", step=1, resolved=True, passed=3, error=None, total=3):
    return {
        "run_id": run_id,
        "parent_run_id": parent,
        "branch_step": step,
        "resolved": resolved,
        "tests_passed": passed,
        "tests_total": total,
        "error": error,
    }


def test_branch_pairs_rank_by_tests_before_reward_and_keep_the_evidence():
    # Three continuations of p at step 1 (after its recorded `ls`); the sandbox path in the system
    # prompt differs per continuation, as a local sandbox's does: the replay's masks hide it.
    runs = [
        trajectory(rid, "m", 0, ["ls", *cmds], system=f"You work in /tmp/trajhub-{rid}/repo.")
        for rid, cmds in (("b1", ["pytest", "edit"]), ("b2", ["edit half"]), ("b3", ["pytest", "edit", "pytest"]))
    ]
    rows = [
        branch_run("b1", resolved=False, passed=2),
        branch_run("b2", resolved=True),
        branch_run("b3", passed=5, total=5),
    ]
    # b2 resolved with the lowest reward: the tests win; b2 and b3 both resolved (their runs found
    # 3 and 5 tests): reward decides
    rewards = [reward("b1", 0.9), reward("b2", 0.5), reward("b3", 0.7)]
    hits = [
        {"run_id": "b2", "conversation_id": "b2-c0", "step_index": 1, "rule_id": "edit_unread_file", "value": -1.0},
        {"run_id": "b2", "conversation_id": "b2-c0", "step_index": 0, "rule_id": "prefix_rule", "value": -1.0},
    ]
    result = branch_pairs(runs, rows, rewards, [], hits, PairPolicy(min_margin=0.1))
    pairs = {(r["kind"], r["chosen_run_id"], r["rejected_run_id"]): r for r in result.table.to_pylist()}
    assert set(pairs) == {
        (kind, chosen, rejected)
        for kind in ("branch_step", "branch_continuation")
        for chosen, rejected in (("b2", "b1"), ("b3", "b1"), ("b3", "b2"))
    }
    by_tests = pairs[("branch_step", "b2", "b1")]
    assert by_tests["basis"] == "tests" and by_tests["margin"] < 0  # chosen despite its lower reward
    assert (by_tests["chosen_resolved"], by_tests["rejected_resolved"]) == (True, False)
    assert (by_tests["chosen_tests_passed"], by_tests["rejected_tests_passed"]) == (3, 2)
    assert by_tests["chosen_rule_hits"] == [{"step_index": 1, "rule_id": "edit_unread_file", "value": -1.0}]
    assert by_tests["prompt"][0]["content"] == "You work in /tmp/trajhub-b2/repo."  # the chosen side's own
    assert [m["role"] for m in by_tests["prompt"]] == ["system", "user", "assistant", "tool"]
    assert json.loads(by_tests["chosen"][0]["tool_calls"][0]["function"]["arguments"]) == {"cmd": "edit half"}
    assert (by_tests["branch_step"], by_tests["parent_run_id"], by_tests["chosen_step_index"]) == (1, "p", 1)
    assert_trl_preference(by_tests)
    # b3 and b1 share `pytest` after the branch step: their step pair is the first turn that differs
    later = pairs[("branch_step", "b3", "b1")]
    assert later["chosen_step_index"] == 3 and len(later["prompt"]) == 8
    assert json.loads(later["chosen"][0]["tool_calls"][0]["function"]["arguments"]) == {"cmd": "pytest"}
    whole = pairs[("branch_continuation", "b3", "b2")]
    assert whole["basis"] == "reward" and whole["margin"] == pytest.approx(0.2)
    assert len(whole["prompt"]) == 4 and [m["role"] for m in whole["chosen"]][-1] == "assistant"
    assert whole["rejected_rule_hits"] == [{"step_index": 1, "rule_id": "edit_unread_file", "value": -1.0}]
    assert_trl_preference(whole)


def test_branch_pairs_leave_out_failed_continuations_and_equal_ones():
    runs = [trajectory(rid, "m", 0, ["ls", "pytest"]) for rid in ("b1", "b2")]
    runs.append(trajectory("b3", "m", 0, ["ls", "edit"]))
    rows = [branch_run("b1"), branch_run("b2", resolved=False), branch_run("b3", error="branch refused: ...")]
    result = branch_pairs(runs, rows, [reward(r, 0.5) for r in ("b1", "b2", "b3")], [], [], PairPolicy())
    assert result.table.num_rows == 0
    assert (result.stats["skipped_failed"], result.stats["skipped_same_actions"]) == (1, 1)
    # close rewards and the same outcome: no pair either
    rows = [branch_run("b1"), branch_run("b3")]
    result = branch_pairs(runs[:1] + runs[2:], rows, [reward("b1", 0.5), reward("b3", 0.52)], [], [], PairPolicy())
    assert result.table.num_rows == 0 and result.stats["skipped_below_margin"] == 1
