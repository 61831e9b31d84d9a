"""Branches: a recorded run served again up to a step through the real proxy, then continued
live, several times; and refused when its prefix no longer reproduces.

The parent is a demo run of the careful baseline (builtin agent, real LiteLLM proxy, the
scripted upstream), in a Docker sandbox and in a local one; the live model of its branches is
the seeded `explorer` baseline, so the continuations of one step differ as a sampled model's do.
Claude Code (the real pinned client) is branched the same way, against a scripted model.
A provider's model (its own api_base and key, as a user configures it) is continued through
the project's proxy; the "provider" is another scripted upstream, and the truth is what it
received.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from trajhub_assets.branching.branches import (
    BRANCH_KIND,
    BranchError,
    branch_call,
    branch_seed,
    live_policy,
    record_branches,
    run_branch,
)
from trajhub_assets.branching.schema import BRANCH_MESSAGE_BLOBS, BRANCH_RAW_CALLS, BRANCHED_TRAJECTORIES
from trajhub_assets.cli import main
from trajhub_assets.config import DEFAULT_CONFIG, ModelConfig, SandboxConfig, load_config
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.recording.attempts import Proxy, run_attempt
from trajhub_assets.recording.proxy_process import free_port
from trajhub_assets.recording.raw_calls import load_runs, read_run, rebuild_records
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.run_id import parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.recording.scripted_upstream import Fail, ScriptedUpstream, reply_from_openai, thinking_block
from trajhub_assets.replay.masks import mask_value
from trajhub_assets.replay.recorded import RecordedRun
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog, tasks_to_table
from trajhub_assets.tasks.schema import TASKS

DEMO_ITEMS = {i.record["instance_id"]: i for i in load_catalog(load_config(DEFAULT_CONFIG))}
TASK = DEMO_ITEMS["demo-lru-eviction"].record
CAREFUL = ModelConfig(name="baseline/careful", route="trajhub-baseline/careful", scaffold="builtin")
LOCAL = SandboxConfig(backend="local", timeout_s=300)
DOCKER = SandboxConfig(backend="docker", timeout_s=300, cpus=1, memory="1g")
STEP = 3  # the careful baseline has listed the files (0), read CHANGELOG.md (1) and lrucache/cache.py (2)


BRANCH_TABLES = (BRANCH_RAW_CALLS, BRANCH_MESSAGE_BLOBS)


def read_run_from_store(store: Store, run_id: str, tables=(RAW_CALLS, MESSAGE_BLOBS)) -> list[dict]:
    """A run's records as stored (in the recording tables, or the branch tables)."""
    calls_table, blobs_table = tables
    run = parse_run_id(run_id)
    partition = {"model": run.model_key, "instance": run.instance}
    calls = store.read(calls_table, partition)
    return rebuild_records(calls.filter(pc.equal(calls["run_id"], run_id)), store.read(blobs_table, partition))


def explorer(policies: BaselinePolicies):
    """The live model of the branches: the explorer baseline, whatever model was asked for."""
    return lambda request: reply_from_openai(policies.respond("explorer", request.body))


def actions(records: list[dict]) -> list[tuple[str, str]]:
    """The tool call (name, arguments) each agent call's response made."""
    out = []
    for record in sorted(records, key=lambda r: r["seq"]):
        if record["call_kind"] == "agent" and record["status"] == "ok":
            (call,) = record["response"]["choices"][0]["message"]["tool_calls"] or [None]
            out.append((call["function"]["name"], call["function"]["arguments"]) if call else ("text", ""))
    return out


@pytest.fixture(scope="module", params=["docker", "local"])
def parent(request, proxy, scripted_upstream) -> tuple[RecordedRun, list[dict], SandboxConfig]:
    sandbox = {"docker": DOCKER, "local": LOCAL}[request.param]
    if sandbox.backend == "docker":
        request.getfixturevalue("docker_engine")
    scripted_upstream.set_script(upstream_policy(BaselinePolicies([TASK])))
    # The builtin agent calls the model from the host, in either backend: the proxy's host URL.
    row = run_attempt(TASK, CAREFUL, 0, proxy.endpoint, sandbox)
    assert row["error"] is None and row["resolved"], row
    records = read_run(proxy.recording(row["run_id"])).records
    conversations = merge_calls(records, run_id=row["run_id"], model=CAREFUL.key, instance=TASK["instance_id"])
    return RecordedRun(row["run_id"], records, row, TASK, CAREFUL), conversations, sandbox


def test_branches_share_the_recorded_prefix_and_continue_live(parent, proxy, upstream):
    recorded, conversations, sandbox = parent
    at = branch_call(recorded, conversations, STEP)
    live = explorer(BaselinePolicies([TASK]))
    rows, continuations = [], []
    for sample in range(3):
        row, policy = run_branch(recorded, STEP, at, sample, proxy.endpoint, sandbox, upstream.set_script, live)
        assert row["error"] is None and policy.branched and policy.divergence is None, row
        assert (row["kind"], row["parent_run_id"], row["branch_step"], row["branch_sample"]) == (
            BRANCH_KIND,
            recorded.run_id,
            STEP,
            sample,
        )
        records = read_run(proxy.recording(row["run_id"])).records
        # the prefix: the recorded responses, and the same prompts asked for them
        assert actions(records)[:STEP] == actions(recorded.records)[:STEP]
        asked, recorded_asked = records[STEP]["request"], recorded.records[STEP]["request"]
        assert mask_value(asked["messages"]) == mask_value(recorded_asked["messages"])  # a temp path differs
        assert records[STEP]["request"]["seed"] == branch_seed(recorded.run_id, STEP, sample)
        rows.append(row)
        continuations.append(tuple(actions(records)[STEP:]))
    assert len(set(continuations)) >= 2, continuations  # a seeded policy, three seeds
    assert continuations[0] != tuple(actions(recorded.records)[STEP:])
    assert len({row["run_id"] for row in rows}) == 3 and recorded.run_id not in {row["run_id"] for row in rows}


def test_a_branch_whose_prefix_no_longer_reproduces_is_refused(parent, proxy, upstream, tmp_path):
    recorded, conversations, sandbox = parent
    workspace = tmp_path / "workspace"
    shutil.copytree(TASK["workspace_source"], workspace)
    cache = workspace / "lrucache" / "cache.py"
    cache.write_text(cache.read_text().replace("class LRUCache:", "# ALTERED\nclass LRUCache:"))
    altered = dataclasses.replace(recorded, task=dict(TASK, workspace_source=str(workspace)))
    served = []

    def live(request):
        served.append(request)
        return explorer(BaselinePolicies([TASK]))(request)

    at = branch_call(recorded, conversations, STEP)
    row, policy = run_branch(altered, STEP, at, 0, proxy.endpoint, sandbox, upstream.set_script, live)
    assert not policy.branched and served == []  # the live model never saw the altered state
    seq = recorded.records[STEP]["seq"]  # the request after the read of cache.py carries it
    assert row["error"].startswith("branch refused: the prefix does not reproduce"), row["error"]
    assert f"recorded call seq {seq}" in row["error"] and "messages[" in row["error"]
    assert "# ALTERED" in policy.divergence.actual and "# ALTERED" not in policy.divergence.expected
    records = read_run(proxy.recording(row["run_id"])).records
    assert [r["http_status"] for r in records][-1] == 400  # the agent was stopped there


def test_a_step_the_run_does_not_have_is_named(parent):
    recorded, conversations, _ = parent
    steps = len(actions(recorded.records))
    with pytest.raises(BranchError, match=f"has {steps} main steps .*no step {steps}"):
        branch_call(recorded, conversations, steps)
    assert json.dumps(branch_seed("a", 1, 0)) != json.dumps(branch_seed("a", 1, 1))


# -- `trajhub branch`: continuations of a stored run, stored -------------------------------
EXPLORER = ModelConfig(
    name="baseline/explorer", route="trajhub-baseline/explorer", scaffold="builtin", sampling={"extra": {"seed": 1}}
)


def store_run(store: Store, model: ModelConfig, row: dict, recording) -> None:
    """A recorded run stored as raw_trajectories and merged_trajectories store it."""
    partition = {"model": model.key, "instance": TASK["instance_id"]}
    store.write(TASKS, tasks_to_table([DEMO_ITEMS[TASK["instance_id"]]]))
    store.write(RUNS, pa.Table.from_pylist([row], schema=RUNS.schema), partition)
    load_runs(store, [recording], model.key, TASK["instance_id"])
    records = read_run(recording).records
    store.write(MERGED_TRAJECTORIES, conversations_to_table(merge_partition(records, **partition)), partition)


def write_project(path, model: ModelConfig):
    path.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(DEFAULT_CONFIG.parent / "tasks/demo/tasks.jsonl")}],
                "models": [model.model_dump(exclude_none=True)],
                "sandbox": LOCAL.model_dump(),
                "branching": {"points": ["even"], "samples": 2, "max_per_run": 1},
            }
        )
    )
    return path


@pytest.fixture
def stored_explorer_run(proxy, scripted_upstream, tmp_path, monkeypatch) -> tuple[Store, str]:
    """A run of the explorer baseline stored as raw_trajectories and merged_trajectories store it,
    in a project whose config has the model; TRAJHUB_HOME and TRAJHUB_CONFIG point at them."""
    scripted_upstream.set_script(upstream_policy(BaselinePolicies([TASK])))
    row = run_attempt(TASK, EXPLORER, 0, proxy.endpoint, LOCAL)
    assert row["error"] is None, row
    store = Store(tmp_path / "home")
    store_run(store, EXPLORER, row, proxy.recording(row["run_id"]))
    config = write_project(tmp_path / "project.yaml", EXPLORER)
    monkeypatch.setenv("TRAJHUB_HOME", str(store.root))
    monkeypatch.setenv("TRAJHUB_CONFIG", str(config))
    return store, row["run_id"]


def test_trajhub_branch_stores_each_continuation_as_a_run_with_its_parent(stored_explorer_run, capsys):
    store, run_id = stored_explorer_run
    parent = read_run_from_store(store, run_id)
    step = min(2, len(actions(parent)) - 1)
    main(["branch", run_id, "--at", str(step), "--samples", "2"])
    out = capsys.readouterr().out
    rows = store.sql("SELECT * FROM branch_runs ORDER BY branch_sample").to_pylist()
    assert [(r["kind"], r["parent_run_id"], r["branch_step"], r["branch_sample"]) for r in rows] == [
        (BRANCH_KIND, run_id, step, 0),
        (BRANCH_KIND, run_id, step, 1),
    ]
    assert all(r["error"] is None and r["run_id"] in out for r in rows), out
    for row in rows:  # every call of a continuation is stored; its prefix is the parent's
        calls = store.sql("SELECT * FROM branch_raw_calls WHERE run_id = ?", [row["run_id"]])
        assert calls.num_rows >= step + 1
        assert actions(read_run_from_store(store, row["run_id"], BRANCH_TABLES))[:step] == actions(parent)[:step]
    blobs = store.sql("SELECT sha256, count(*) AS n FROM branch_message_blobs GROUP BY ALL HAVING n > 1")
    assert blobs.num_rows == 0  # the shared prefix's blobs once
    main(["branch", run_id, "--at", str(step), "--samples", "1"])  # more branches keep the earlier ones
    assert store.sql("SELECT count(*) AS n FROM branch_runs").to_pylist() == [{"n": 3}]
    assert store.sql("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 1}]  # the runs table untouched


def test_the_asset_branches_each_point_once_and_merges_the_continuations(stored_explorer_run):
    from dagster import DagsterInstance, materialize

    from trajhub_assets.branching.assets import branched_trajectories
    from trajhub_assets.partitions import run_key

    store, run_id = stored_explorer_run
    steps = len(actions(read_run_from_store(store, run_id)))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("models", [EXPLORER.key])
    instance.add_dynamic_partitions("instances", [TASK["instance_id"]])
    resources = {
        "store": StoreResource(root=str(store.root)),
        "project": ProjectResource(),
        "proxy": ProxyResource(project=ProjectResource()),  # not started: a baseline continues here
    }

    def materialized():
        result = materialize(
            [branched_trajectories],
            instance=instance,
            resources=resources,
            partition_key=run_key(EXPLORER.key, TASK["instance_id"]),
        )
        assert result.success
        (event,) = result.asset_materializations_for_node("branched_trajectories")
        return {k: v.value for k, v in event.metadata.items() if not k.startswith("batch")}

    first = materialized()
    assert (first["points"], first["continuations"], first["refused"]) == (1, 2, 0), first
    rows = store.sql("SELECT * FROM branch_runs").to_pylist()
    assert {(r["parent_run_id"], r["branch_step"]) for r in rows} == {(run_id, round(steps / 2))}
    merged = store.sql("SELECT DISTINCT run_id FROM branched_trajectories WHERE kind = 'main'").to_pylist()
    assert sorted(r["run_id"] for r in merged) == sorted(r["run_id"] for r in rows)
    again = materialized()  # the point is branched: nothing new, what is stored stays
    kept = first["branch_conversations"]
    assert (again["points"], again["continuations"], again["branch_conversations"]) == (0, 0, kept)
    assert store.sql("SELECT count(*) AS n FROM branch_runs").to_pylist() == [{"n": 2}]


def test_branches_are_scored_and_paired_by_tests_then_reward(stored_explorer_run, proxy, monkeypatch):
    """branched_trajectories, branch_rewards and branch_pairs on one recorded explorer run: every
    continuation that went live is scored as a run is, and each pair of continuations of the point
    is ranked by its outcome first, its prompt the shared prefix, its evidence the stored rows."""
    from dagster import DagsterInstance, materialize

    from trajhub_assets.branching.assets import branch_pairs, branch_rewards, branched_trajectories
    from trajhub_assets.partitions import run_key

    store, run_id = stored_explorer_run
    config = Path(os.environ["TRAJHUB_CONFIG"])
    project = yaml.safe_load(config.read_text())
    project["branching"] |= {"samples": 4, "max_per_run": 2}
    config.write_text(yaml.safe_dump(project))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("models", [EXPLORER.key])
    instance.add_dynamic_partitions("instances", [TASK["instance_id"]])
    resources = {
        "store": StoreResource(root=str(store.root)),
        "project": ProjectResource(),
        # the judge (baseline/judge) asks the test's proxy, whose upstream serves the baselines
        "proxy": ProxyResource(url=proxy.url, master_key=proxy.master_key, recordings_dir=str(proxy.recordings)),
    }
    result = materialize(
        [branched_trajectories, branch_rewards, branch_pairs],
        instance=instance,
        resources=resources,
        partition_key=run_key(EXPLORER.key, TASK["instance_id"]),
    )
    assert result.success
    runs = {r["run_id"]: r for r in store.sql("SELECT * FROM branch_runs").to_pylist()}
    live = {run for run, row in runs.items() if row["error"] is None}
    assert len(runs) == 8 and live, runs
    rewarded = store.sql("SELECT run_id, reward, outcome FROM branch_trajectory_rewards").to_pylist()
    assert {r["run_id"] for r in rewarded} == live  # every live continuation scored, once
    judged = store.sql("SELECT DISTINCT run_id FROM branch_judge_steps WHERE step_reward IS NOT NULL").to_pylist()
    assert {r["run_id"] for r in judged} == live
    reward = {r["run_id"]: r["reward"] for r in rewarded}
    hits = store.sql("SELECT run_id, step_index, rule_id, value FROM branch_rule_steps").to_pylist()
    pairs = store.sql("SELECT * FROM branch_pairs").to_pylist()
    (event,) = result.asset_materializations_for_node("branch_pairs")
    assert event.metadata["pairs"].value == len(pairs)
    merged = store.read(BRANCHED_TRAJECTORIES, {"model": EXPLORER.key, "instance": TASK["instance_id"]})
    conversations = {
        c["meta"]["run_id"]: c for c in table_to_conversations(merged.filter(pc.equal(merged["kind"], "main")))
    }
    outcome = {run: (bool(runs[run]["resolved"]), runs[run]["tests_passed"] or 0) for run in live}
    distinct = {json.dumps(actions(read_run_from_store(store, run, BRANCH_TABLES))) for run in live}
    assert len(distinct) > 1, "the seeded samples should differ"  # else there is nothing to pair
    assert pairs, str({k: v.value for k, v in event.metadata.items()})[:3000]
    for pair in pairs:
        chosen, rejected = pair["chosen_run_id"], pair["rejected_run_id"]
        assert {chosen, rejected} <= live and pair["parent_run_id"] == run_id
        if outcome[chosen] != outcome[rejected]:
            assert pair["basis"] == "tests" and outcome[chosen] > outcome[rejected], pair["pair_id"]
        else:
            assert pair["basis"] == "reward" and reward[chosen] - reward[rejected] >= 0.05, pair["pair_id"]
        for side, run in (("chosen", chosen), ("rejected", rejected)):
            assert pair[f"{side}_resolved"] == runs[run]["resolved"]
            assert pair[f"{side}_tests_passed"] == runs[run]["tests_passed"]
            assert pair[f"{side}_trajectory_reward"] == reward[run]
        messages = conversations[chosen]["messages"]
        cut = len(pair["prompt"])
        assert [m["content"] for m in pair["prompt"]] == [m["content"] for m in messages[:cut]]
        # the rejected side was served the same prefix: equal but for the sandbox's own paths
        rejected_prefix = conversations[rejected]["messages"][:cut]
        assert [mask_value(m["content"]) for m in pair["prompt"]] == [mask_value(m["content"]) for m in rejected_prefix]
        assert pair["chosen"] != pair["rejected"]
        if pair["kind"] == "branch_step":  # one assistant turn each: the first where they differ
            assert [m["role"] for m in pair["chosen"] + pair["rejected"]] == ["assistant", "assistant"]
            step = pair["chosen_step_index"]
            held = [h for h in hits if h["run_id"] == chosen and h["step_index"] == step]
            assert pair["chosen_rule_hits"] == [{k: h[k] for k in ("step_index", "rule_id", "value")} for h in held]
        else:  # the continuations whole, from the branch step
            assert pair["kind"] == "branch_continuation" and pair["chosen_step_index"] == pair["branch_step"]
            assert len(pair["prompt"]) + len(pair["chosen"]) == len(messages)
    (event,) = result.asset_materializations_for_node("branched_trajectories")
    assert event.metadata["stored_continuations"].value == 8


# -- a provider's model: continued live through the project's proxy, with its own key -------
ACME_KEY = "sk-acme-model-3c9e"  # the model's key, in the variable its api_key_env names


def acme_explorer(api_base: str) -> ModelConfig:
    """The explorer policy served by a "provider" at `api_base`, configured as a user's model."""
    return EXPLORER.model_copy(
        update={"name": "acme/explorer", "route": "openai/explorer", "api_base": api_base, "api_key_env": "ACME_KEY"}
    )


def parent_call(records: list[dict], run_id: str, step: int) -> int:
    """The index of the call that produced main step `step` of a stored run."""
    run = parse_run_id(run_id)
    conversations = merge_calls(records, run_id=run_id, model=run.model_key, instance=run.instance)
    return branch_call(RecordedRun(run_id, records, {}, TASK, EXPLORER), conversations, step)


@contextmanager
def project_proxy(config, tmp_path):
    """The project's recording proxy as a normal run starts it (ProxyResource), stopped after."""
    resource = ProxyResource(project=ProjectResource(path=str(config)), recordings_dir=str(tmp_path / "recordings"))
    try:
        yield resource
    finally:
        resource.teardown_after_execution(None)


@pytest.fixture
def provider(monkeypatch):
    monkeypatch.setenv("ACME_KEY", ACME_KEY)
    with ScriptedUpstream(upstream_policy(BaselinePolicies([TASK]))) as server:
        yield server


@pytest.fixture
def provider_run(provider, tmp_path):
    """A run of the provider's model, recorded through the project's proxy and stored; then
    the provider's log is emptied. Yields the store, the run id, the config and the proxy."""
    model = acme_explorer(f"{provider.url}/v1")
    config = write_project(tmp_path / "project.yaml", model)
    with project_proxy(config, tmp_path / "project") as proxy:
        row = run_attempt(TASK, model, 0, Proxy(proxy.base_url, proxy.base_url, proxy.key), LOCAL)
        assert row["error"] is None and len(provider.served) >= 3, row
        store = Store(tmp_path / "home")
        store_run(store, model, row, proxy.recordings() / f"{row['run_id']}.jsonl")
        provider.set_script(upstream_policy(BaselinePolicies([TASK])))  # from here: the branch's calls only
        yield store, row["run_id"], config, proxy


def test_a_provider_model_is_continued_through_the_project_proxy_with_its_own_key(provider_run, provider):
    store, run_id, config, proxy = provider_run
    parent = read_run_from_store(store, run_id)
    step = 2
    (row,) = record_branches(store, load_config(config), run_id, step, 1, proxy)
    assert row["error"] is None and row["kind"] == BRANCH_KIND and row["route"] == "openai/explorer", row
    branch = sorted(read_run_from_store(store, row["run_id"], BRANCH_TABLES), key=lambda r: r["seq"])
    at = parent_call(parent, run_id, step)
    assert actions(branch)[:step] == actions(parent)[:step]  # the prefix: served from the recording
    live = branch[at:]
    served = provider.served
    # The provider received the live calls, each as the agent asked it, and nothing else.
    assert len(served) == len(live) >= 1
    for call, received in zip(live, served, strict=True):
        assert received.request.path == "/v1/chat/completions" and received.status == 200
        assert received.request.body["messages"] == call["request"]["messages"]
        assert received.request.body["tools"] == call["request"]["tools"]
        assert received.request.body["seed"] == call["request"]["seed"] == branch_seed(run_id, step, 0)
        assert received.request.body["model"] == "explorer"  # the route's model name at its provider
        assert received.request.headers["authorization"] == f"Bearer {ACME_KEY}"
        # What the provider answered is what the continuation stored, to the byte.
        assert call["response"] == received.body and call["status"] == "ok"
        assert call["usage"]["output_tokens"] == received.body["usage"]["completion_tokens"]
    assert served[0].request.body["messages"] == branch[at]["request"]["messages"]  # step k's call, first
    # Its key and no other: neither proxy's master key, nor the replay's key to its upstream.
    wire = json.dumps([(s.request.headers, s.request.body) for s in served])
    assert "sk-trajhub-" not in wire and "scripted-" not in wire and proxy.key not in wire
    assert actions(branch)[step:] != actions(parent)[step:]  # another seed: the live model's own steps
    # The project's proxy recorded the live calls too, under the continuation's run id.
    through = read_run(proxy.recordings() / f"{row['run_id']}.jsonl").records
    assert [r["response"] for r in through] == [s.body for s in served]


def test_trajhub_branch_continues_a_provider_model_through_the_proxy_a_run_starts(
    provider_run, provider, monkeypatch, capsys
):
    store, run_id, config, _ = provider_run
    monkeypatch.setenv("TRAJHUB_HOME", str(store.root))
    monkeypatch.setenv("TRAJHUB_CONFIG", str(config))
    main(["branch", run_id, "--at", "2", "--samples", "1"])
    (row,) = store.sql("SELECT * FROM branch_runs").to_pylist()
    assert row["error"] is None and row["run_id"] in capsys.readouterr().out, row
    assert provider.served and {s.request.headers["authorization"] for s in provider.served} == {f"Bearer {ACME_KEY}"}
    # The proxy `trajhub run` would start recorded them, under the continuation's run id.
    through = read_run(store.root / "recordings" / f"{row['run_id']}.jsonl").records
    assert [r["response"] for r in through] == [s.body for s in provider.served]


def failed_continuation(store: Store, run_id: str, row: dict, api_base: str) -> str:
    """The continuation's error, after checking it names the model and its endpoint, and that
    nothing recorded was lost: the row stored with it, and every call the agent made."""
    named = f"the live model failed: model 'acme/explorer' (route openai/explorer) at {api_base}: "
    assert row["error"].startswith(named), row["error"]
    (stored,) = store.sql("SELECT * FROM branch_runs").to_pylist()
    assert stored["error"] == row["error"]
    branch = sorted(read_run_from_store(store, row["run_id"], BRANCH_TABLES), key=lambda r: r["seq"])
    at = parent_call(read_run_from_store(store, run_id), run_id, 2)
    assert [r["status"] for r in branch[:at]] == ["ok"] * at and branch[at:]  # the prefix, then the live calls
    assert all(r["status"] != "ok" for r in branch[at:])
    return row["error"]


def test_a_provider_that_is_down_is_named_in_the_continuations_row(provider_run, tmp_path):
    store, run_id, _, _ = provider_run
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = write_project(tmp_path / "down.yaml", acme_explorer(down))
    with project_proxy(config, tmp_path / "down") as proxy:
        (row,) = record_branches(store, load_config(config), run_id, 2, 1, proxy)
    assert "connect" in failed_continuation(store, run_id, row, down).lower(), row["error"]


def test_a_provider_answering_an_error_is_named_in_the_continuations_row(provider_run, provider):
    store, run_id, config, proxy = provider_run
    provider.set_script(lambda request: Fail(503, "acme: overloaded, try later"))
    (row,) = record_branches(store, load_config(config), run_id, 2, 1, proxy)
    error = failed_continuation(store, run_id, row, f"{provider.url}/v1")
    assert "HTTP 503" in error and "acme: overloaded, try later" in error, error
    assert provider.served and all(s.status == 503 for s in provider.served)


def test_a_provider_model_needs_a_proxy_to_continue_through():
    with pytest.raises(BranchError, match="anthropic/claude-x.*through a proxy, none given"):
        live_policy(ModelConfig(name="claude", route="anthropic/claude-x", scaffold="claudecode"), [TASK])


# -- Claude Code, the real pinned client -----------------------------------------------------
def test_claude_code_is_branched_at_a_step_and_refused_when_its_prefix_changed(proxy, upstream, tmp_path):
    from trajhub_assets.scaffolds import clients, make_scaffold
    from trajhub_assets_tests.test_scaffolds_cli import agent_policy, make_task

    try:
        make_scaffold("claudecode").install()
    except clients.ClientError as error:
        pytest.fail(f"Claude Code is not installed (scripts/install_clients.sh): {error}")
    task = make_task(tmp_path)
    model = ModelConfig(name="scripted/claude", route="scripted-anthropic", scaffold="claudecode")
    upstream.set_script(agent_policy("claudecode", ("cat README.md", "echo one > one.txt", "echo two > two.txt")))
    row = run_attempt(task, model, 0, proxy.endpoint, LOCAL)
    assert row["error"] is None and row["agent_exit_code"] == 0 and "one.txt" in row["diff"], row
    records = read_run(proxy.recording(row["run_id"])).records
    recorded = RecordedRun(row["run_id"], records, row, task, model)
    conversations = merge_calls(records, run_id=row["run_id"], model=model.key, instance=task["instance_id"])
    at = branch_call(recorded, conversations, 1)  # the call after `cat README.md` ran

    live = agent_policy("claudecode", ("cat README.md", "echo live > live.txt"))
    branch, policy = run_branch(recorded, 1, at, 0, proxy.endpoint, LOCAL, upstream.set_script, live)
    assert branch["error"] is None and policy.branched and branch["agent_exit_code"] == 0, branch
    assert "live.txt" in branch["diff"] and "one.txt" not in branch["diff"]  # the live model's step, not the recorded

    altered_repo = tmp_path / "altered"
    shutil.copytree(task["workspace_source"], altered_repo)
    (altered_repo / "README.md").write_text("ALTERED README\n")
    altered = dataclasses.replace(recorded, task=dict(task, workspace_source=str(altered_repo)))
    refused, policy = run_branch(altered, 1, at, 1, proxy.endpoint, LOCAL, upstream.set_script, live)
    assert not policy.branched and refused["error"].startswith("branch refused: the prefix does not reproduce")
    assert "ALTERED README" in policy.divergence.actual and "messages[" in policy.divergence.path


def thinking(policy):
    """`policy`, with a signed thinking block ahead of each agent turn, and cached input tokens."""

    def respond(request):
        reply = policy(request)
        if request.wire_format == "anthropic_messages" and request.body.get("tools"):
            signature = f"sig-{request.index}-{len(request.body['messages'])}"
            reply.blocks = [thinking_block("Which command next?", signature), *reply.blocks]
            reply.cache_read_tokens = 7
        return reply

    return respond


def branch_at_an_anthropic_provider(tmp_path, monkeypatch, scaffold: str):
    """A run of `scaffold` on `anthropic/claude-sonnet-4-5` at a scripted Anthropic provider
    (through the project's proxy), branched at step 1 with that provider live. Returns the
    continuation's row, its recorded calls in seq order, the branch call's index and what the
    provider received for the continuation."""
    from trajhub_assets.replay.service import ReplayService
    from trajhub_assets.scaffolds import clients, make_scaffold
    from trajhub_assets_tests.test_scaffolds_cli import agent_policy, make_task

    try:
        make_scaffold(scaffold).install()
    except clients.ClientError as error:
        pytest.fail(f"{scaffold} is not installed (scripts/install_clients.sh): {error}")
    monkeypatch.setenv("ACME_KEY", ACME_KEY)
    task = make_task(tmp_path)
    with ScriptedUpstream(thinking(agent_policy(scaffold, ("cat README.md", "echo one > one.txt")))) as provider:
        model = ModelConfig(
            name="acme/claude",
            route="anthropic/claude-sonnet-4-5",
            api_base=provider.url,
            api_key_env="ACME_KEY",
            scaffold=scaffold,
        )
        config = write_project(tmp_path / "project.yaml", model)
        with project_proxy(config, tmp_path / "project") as proxy:
            row = run_attempt(task, model, 0, Proxy(proxy.base_url, proxy.base_url, proxy.key), LOCAL)
            assert row["error"] is None and "one.txt" in row["diff"], row
            records = read_run(proxy.recordings() / f"{row['run_id']}.jsonl").records
            recorded = RecordedRun(row["run_id"], records, row, task, model)
            conversations = merge_calls(records, run_id=row["run_id"], model=model.key, instance=task["instance_id"])
            at = branch_call(recorded, conversations, 1)  # the call after `cat README.md` ran
            provider.set_script(thinking(agent_policy(scaffold, ("cat README.md", "echo live > live.txt"))))
            with ReplayService([recorded], tmp_path / "home", LOCAL, purpose="branches") as service:
                live = live_policy(model, [task], proxy)
                branch, policy = run_branch(recorded, 1, at, 0, service.proxy, LOCAL, service.upstream.set_script, live)
                calls = read_run(service.recordings_dir / f"{branch['run_id']}.jsonl").records
    assert branch["error"] is None and policy.branched and "live.txt" in branch["diff"], branch
    assert "one.txt" not in branch["diff"]  # the live model's step, not the recorded one
    served = provider.served
    assert served and all(s.status == 200 for s in served)
    assert {s.request.headers.get("x-api-key") for s in served} == {ACME_KEY}
    assert {s.request.body["model"] for s in served} == {"claude-sonnet-4-5"}
    wire = json.dumps([(s.request.headers, s.request.body) for s in served])
    assert "sk-trajhub-" not in wire and "scripted-" not in wire  # no proxy's key, nor the replay's
    calls = sorted(calls, key=lambda r: r["seq"])
    # The provider received only what came after the prefix: no call the recording answered.
    prefix_prompts = {json.dumps(r["request"].get("messages")) for r in calls[:at]}
    assert not prefix_prompts & {json.dumps(s.request.body.get("messages")) for s in served}
    assert any(b["type"] == "thinking" for s in served for b in s.body.get("content") or [])
    return branch, calls, at, served


def test_claude_code_on_a_provider_model_is_continued_with_its_thinking_and_its_key(tmp_path, monkeypatch):
    """Claude Code streams Anthropic messages; the provider's answers (a signed thinking block,
    text, a tool call, usage) reach it through both proxies, and are stored, as the provider sent them."""
    _, calls, _, served = branch_at_an_anthropic_provider(tmp_path, monkeypatch, "claudecode")
    assert all(call["stream"] for call in calls)  # the agent streamed: served from the provider's whole body
    answered = {r["response"]["id"]: r for r in calls if isinstance(r.get("response"), dict) and "id" in r["response"]}
    for received in served:  # each answer the provider gave is the response the continuation recorded, by its id
        call = answered[received.body["id"]]
        assert call["response"]["content"] == received.body["content"]  # thinking, signature and all
        assert call["response"]["usage"]["cache_read_input_tokens"] == received.body["usage"]["cache_read_input_tokens"]
        assert received.request.body["messages"] == call["request"]["messages"]


def test_the_builtin_agent_on_an_anthropic_model_is_continued_through_the_proxys_translation(tmp_path, monkeypatch):
    """The builtin agent speaks OpenAI chat; the project's proxy translates its live calls to the
    Anthropic provider and the answers back, as in a normal run: the continuation records the
    translated answer, every tool call, thought and token of the provider's in it."""
    _, calls, at, served = branch_at_an_anthropic_provider(tmp_path, monkeypatch, "builtin")
    live = calls[at:]
    assert len(live) == len(served) and all(call["wire_format"] == "openai_chat" for call in live)
    for call, received in zip(live, served, strict=True):
        message = call["response"]["choices"][0]["message"]
        blocks = received.body["content"]
        uses = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]
        assert uses == [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
        thoughts = [(b["thinking"], b["signature"]) for b in blocks if b["type"] == "thinking"]
        assert [(b["thinking"], b["signature"]) for b in message["thinking_blocks"]] == thoughts
        usage, provided = call["response"]["usage"], received.body["usage"]
        assert usage["completion_tokens"] == provided["output_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == provided["cache_read_input_tokens"] == 7
