"""hf_dataset_release: datasets round trip, TRL format, reproducibility, the secret scan, the push."""

import json
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.config import ReleaseConfig
from trajhub_assets.pairs.pairs import PairPolicy, preference_pairs
from trajhub_assets.release.calibration import calibrate
from trajhub_assets.release.release import ReleaseError, ReleaseInputs, build_release, push_release, verify_release
from trajhub_assets.release.secrets import _SECRET, PATTERNS, SecretLeakError, mask, scan_rows, scan_text
from trajhub_assets.tasks.catalog import TaskRecord, tasks_to_table
from trajhub_assets_tests.test_pairs import (
    assert_trl_preference,
    claude_trajectory,
    kept_fields,
    opaque,
    reward,
    trajectory,
)

# Built from parts so no scanner (ours or a forge's) mistakes this file for a leak.
FAKE_KEYS = {
    "anthropic": "sk-" + "ant-api03-" + "Ab1" * 30,
    "openai_project": "sk-" + "proj-" + "Zz9_" * 10,
    "openai": "sk-" + "A1b2" * 12,
    "huggingface": "hf" + "_" + "aBcD" * 9,
    "aws_access_key": "AKIA" + "ABCD2345WXYZ7890",
    "github_token": "gh" + "p_" + "a1B2" * 9,
    "github_pat": "github" + "_pat_" + "11ABCDEFG" * 4,
    "bearer_token": "Authorization: " + "Bearer " + "eyJ" + "x" * 40,
}


def task(instance_id, category):
    record = {
        "instance_id": instance_id,
        "user_query": ["fix the bug"],
        "system_prompt": "be careful",
        "category": category,
        "image": "img:latest",
        "workspace_abs_path": "/work",
        "scaffold": {"name": "builtin"},
        "checklist": {
            "SP": {
                "description": "d",
                "checks": [{"check_id": "c1", "description": "no sudo", "check_type": "compliance"}],
            }
        },
        "reference_patch": "/home/someone/secret/path.patch",
    }
    return TaskRecord(record, "tasks.jsonl", 1)


def make_inputs(plant=None, shuffle=False, steps_kept=None):
    runs = {
        "inst-1": [
            trajectory("r1", "m-a", 0, ["ls", "pytest"]),
            trajectory("r2", "m-b", 0, ["ls", "rm x"]),
            trajectory("r3", "m-b", 1, ["pwd"]),
        ],
        "inst-2": [trajectory("r4", "m-a", 0, ["make"]), trajectory("r5", "m-b", 0, ["make test"])],
    }
    for t in runs["inst-2"]:
        t["meta"]["instance"] = "inst-2"
    if plant is not None:
        runs["inst-1"][0]["messages"][3]["content"] = f"env output: ANTHROPIC_API_KEY={plant}"
    rewards = [reward("r1", 0.9), reward("r2", 0.3), reward("r3", 0.5), reward("r4", 0.8), reward("r5", 0.2)]
    steps = [
        {"run_id": r, "step_index": k, "step_reward": v}
        for r, k, v in [
            ("r1", 0, 0.5),
            ("r1", 1, 0.9),
            ("r2", 0, 0.5),
            ("r2", 1, 0.1),
            ("r3", 0, 0.4),
            ("r4", 0, 0.7),
            ("r5", 0, 0.2),
        ]
    ]
    pairs = [preference_pairs(ts, rewards, steps, PairPolicy(min_margin=0.1)).table for ts in runs.values()]
    trajectories = [t for ts in runs.values() for t in ts]
    if shuffle:
        random.Random(7).shuffle(trajectories)
        random.Random(7).shuffle(rewards)
        random.Random(7).shuffle(steps)
        pairs.reverse()
    labels = [
        {"pair_id": p, "annotator": a, "preferred": "chosen", "score": None}
        for p in sorted(pa.concat_tables(pairs).column("pair_id").to_pylist())[:3]
        for a in ("ann", "bob")
    ]
    all_pairs = pa.concat_tables(pairs)
    return ReleaseInputs.from_rows(
        tasks=tasks_to_table([task("inst-2", "Memory"), task("inst-1", "SP")]),
        trajectories=trajectories,
        trajectory_rewards=rewards,
        step_rewards=steps[:steps_kept],
        pairs=all_pairs,
        calibration=calibrate(all_pairs, labels),
        models=[
            {"name": "m-a", "scaffold": "builtin", "samples": 1},
            {"name": "m-b", "scaffold": "builtin", "samples": 2},
        ],
        reward_weights={"outcome": 0.5, "step": 0.25, "checklist": 0.25},
    )


CONFIG = ReleaseConfig(name="trajhub-test", license="mit")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_release(make_inputs(), CONFIG, tmp_path_factory.mktemp("root"), rows_per_shard=4)


def test_release_round_trips_through_datasets(release, tmp_path):
    root = release.path
    assert root.parent.name == "trajhub-test" and root.parent.parent.name == "releases"
    cache = str(tmp_path / "hf-cache")
    for name, rows in release.rows.items():
        files = sorted(str(p) for p in (root / "data" / name).glob("*.parquet"))
        assert len(files) == max(1, -(-rows // 4))
        loaded = datasets.load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=cache)
        assert loaded.num_rows == rows
    # the card's YAML configs are what the Hub (and load_dataset on the folder) reads
    prefs = datasets.load_dataset(str(root), "preferences", split="train", cache_dir=cache)
    assert prefs.num_rows == release.rows["preferences"] > 0
    assert {
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "chosen_model",
        "rejected_model",
        "chosen_attempt",
        "rejected_attempt",
        "instance_id",
        "reward_version",
        "chosen_reward",
        "rejected_reward",
    } <= set(prefs.column_names)
    assert {row["kind"] for row in prefs} == {"trajectory", "step"}
    for row in prefs:
        assert_trl_preference(row)
        assert row["chosen_reward"] > row["rejected_reward"]
    sft = datasets.load_dataset(str(root), "trajectories", split="train", cache_dir=cache)
    for row in sft:  # TRL's conversational language-modeling format
        assert [m["role"] for m in row["messages"][:2]] == ["system", "user"]
        assert all(isinstance(m["content"], str) and "generation" not in m for m in row["messages"])
        assert all(row["messages"][i]["role"] == "assistant" for i in row["generated_indices"])
        assert json.loads(row["tools_json"])[0]["function"]["name"] == "shell"
    steps = datasets.load_dataset(str(root), "step_rewards", split="train", cache_dir=cache)
    assert steps.num_rows == 7 and all(s["message_index"] is not None for s in steps)
    tasks = datasets.load_dataset(str(root), "tasks", split="train", cache_dir=cache)
    assert tasks["instance_id"] == ["inst-1", "inst-2"] and "reference_patch" not in tasks.column_names


def test_card_header_and_contents(release):
    card = DatasetCard.load(release.path / "README.md")
    assert card.data.license == "mit" and card.data.size_categories == ["n<1K"]
    assert "text-generation" in card.data.task_categories
    assert [c["config_name"] for c in card.data.configs] == ["trajectories", "preferences", "step_rewards", "tasks"]
    text = card.text
    assert "| m-a | 2 |" in text and "| SP | 1 | 3 |" in text  # counts per model and category
    assert "cohen kappa" in text and "agreement with human majority" in text
    assert "`v1`" in text and "outcome 0.5" in text
    assert (release.path / "calibration.md").read_text().startswith("## Reward calibration")
    assert verify_release(release.path)["rows"] == release.rows


def test_same_inputs_give_byte_identical_files(release, tmp_path):
    again = build_release(make_inputs(shuffle=True), CONFIG, tmp_path / "other-root", rows_per_shard=4)
    assert again.version == release.version and again.version.startswith("sha-")
    assert again.files == release.files
    for name in release.files:
        assert (again.path / name).read_bytes() == (release.path / name).read_bytes()
    reused = build_release(make_inputs(), CONFIG, tmp_path / "other-root", rows_per_shard=4)
    assert reused.reused and reused.path == again.path
    fewer = make_inputs(steps_kept=2)
    with pytest.raises(ReleaseError, match="already holds a different release"):
        build_release(fewer, CONFIG, tmp_path / "other-root", version=again.version, rows_per_shard=4)


def test_planted_key_in_a_tool_output_refuses_the_release(tmp_path):
    key = FAKE_KEYS["anthropic"]
    with pytest.raises(SecretLeakError) as caught:
        build_release(make_inputs(plant=key), CONFIG, tmp_path)
    message = str(caught.value)
    assert "trajectories row 0, field messages[3].content: anthropic key" in message
    assert "preferences row" in message  # the pairs carry the same tool output
    assert key not in message and key[:24] not in message
    assert not (tmp_path / "releases" / "trajhub-test").exists() or not any(
        (tmp_path / "releases" / "trajhub-test").iterdir()
    )


@pytest.mark.parametrize("kind", sorted(FAKE_KEYS))
def test_each_key_format_is_found_and_masked(kind):
    secret = FAKE_KEYS[kind]
    [hit] = scan_rows("t", [{"messages": [{"tool_calls": [{"function": {"arguments": json.dumps({"x": secret})}}]}]}])
    assert (hit.row, hit.field) == (0, "messages[0].tool_calls[0].function.arguments")
    assert hit.kind == kind and secret not in str(hit) and hit.masked == mask(secret)
    assert kind in PATTERNS


def test_ordinary_text_is_not_a_key():
    text = (
        "task-ant-colony-simulation hf_hub_download sk-short AKIAshort ghp_short "
        "Authorization: Bearer $TOKEN use sk-ant- prefixes for keys; sk-learning-rate-schedule-for-training"
    )
    assert list(scan_text(text)) == []


def test_push_only_with_repo_and_token(release):
    class FakeApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs["repo_type"]))

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs["repo_id"], kwargs["folder_path"]))
            return type("Commit", (), {"commit_url": "https://hub.example/commit/1"})()

    api = FakeApi()
    assert push_release(release, CONFIG, environ={"HF_TOKEN": "x"}, api=api) is None  # no repo
    configured = ReleaseConfig(name="trajhub-test", hf_repo="org/trajhub-test", hf_token_env="MY_HF_TOKEN")
    assert push_release(release, configured, environ={}, api=api) is None  # no token
    assert api.calls == []
    url = push_release(release, configured, environ={"MY_HF_TOKEN": "x"}, api=api)
    assert url == "https://hub.example/commit/1"
    assert api.calls == [
        ("create_repo", "org/trajhub-test", "dataset"),
        ("upload_folder", "org/trajhub-test", str(release.path)),
    ]


# -- thinking, content parts, extra and null content in the release ---------------------------
# A signature that holds a Google-key-shaped run by chance, as random base64 now and then does.
LUCKY_SIGNATURE = opaque("lucky") + "+AIza" + "Sy" + "A1b2" * 8 + "c" + "=="


def thinking_inputs():
    """inst-1: two merged Anthropic runs (signed and redacted thinking, parts, extra; one signature
    lucky); inst-2: two runs whose tool-call turns have a null content."""
    claude = [
        claude_trajectory("r1", "claude-a", 0, ["ls", "pytest"]),
        claude_trajectory("r2", "claude-b", 0, ["ls", "rm -rf build"]),
    ]
    claude[1]["messages"][4]["thinking_blocks"][0]["signature"] = LUCKY_SIGNATURE
    null = [
        trajectory("r3", "m-a", 0, ["make"], act_content=None),
        trajectory("r4", "m-b", 0, ["make test"], act_content=None),
    ]
    for t in null:
        t["meta"]["instance"] = "inst-2"
    rewards = [reward("r1", 0.8), reward("r2", 0.3), reward("r3", 0.9), reward("r4", 0.1)]
    steps = [
        {"run_id": r, "step_index": k, "step_reward": v}
        for r, k, v in [("r1", 0, 0.5), ("r1", 1, 0.9), ("r2", 0, 0.5), ("r2", 1, 0.2)]
    ]
    pairs = pa.concat_tables(
        [preference_pairs(ts, rewards, steps, PairPolicy(min_margin=0.1)).table for ts in (claude, null)]
    )
    return ReleaseInputs.from_rows(
        tasks=tasks_to_table([task("inst-1", "SP"), task("inst-2", "Memory")]),
        trajectories=claude + null,
        trajectory_rewards=rewards,
        step_rewards=steps,
        pairs=pairs,
    )


def test_thinking_parts_extra_and_null_content_survive_into_the_release(tmp_path):
    inputs = thinking_inputs()
    assert any(kind == "google_api_key" for kind, _ in scan_text(LUCKY_SIGNATURE))  # as plain text it would be
    release = build_release(inputs, CONFIG, tmp_path / "root", rows_per_shard=4)
    cache = str(tmp_path / "hf-cache")
    runs = {t["meta"]["run_id"]: t for trajectories, _, _ in inputs.runs for t in trajectories}

    sft = datasets.load_dataset(str(release.path), "trajectories", split="train", cache_dir=cache)
    assert sorted(sft["run_id"]) == sorted(runs)
    for row in sft:
        assert [kept_fields(m) for m in row["messages"]] == [kept_fields(m) for m in runs[row["run_id"]]["messages"]]
    by_run = {row["run_id"]: row["messages"] for row in sft}
    assert by_run["r1"][2]["thinking_blocks"] == runs["r1"]["messages"][2]["thinking_blocks"]
    assert by_run["r2"][4]["thinking_blocks"][0]["signature"] == LUCKY_SIGNATURE
    assert by_run["r1"][2]["thinking_blocks"][1] == {
        "type": "redacted_thinking",
        "thinking": None,
        "signature": None,
        "data": opaque("data ls", repeat=40),
    }
    assert by_run["r3"][2]["content"] is None and by_run["r3"][0]["content"] == "You are a coding agent."

    prefs = datasets.load_dataset(str(release.path), "preferences", split="train", cache_dir=cache)
    pairs = pa.concat_tables(inputs.pairs)
    assert prefs.num_rows == pairs.num_rows
    stored = {r["pair_id"]: r for r in pairs.to_pylist()}
    for row in prefs:
        assert_trl_preference(row)
        for side in ("prompt", "chosen", "rejected"):
            assert row[side] == stored[row["pair_id"]][side]
    [step] = [r for r in prefs if r["kind"] == "step"]
    assert step["rejected"][0]["thinking_blocks"][0]["signature"] == LUCKY_SIGNATURE
    assert any(m["content"] is None for r in prefs if r["instance_id"] == "inst-2" for m in r["chosen"])

    # the shards themselves, read without `datasets`, hold the same rows
    for name in ("trajectories", "preferences"):
        read = pa.concat_tables([pq.read_table(p) for p in sorted((release.path / "data" / name).glob("*.parquet"))])
        assert (
            read.to_pylist() == datasets.load_dataset(str(release.path), name, split="train", cache_dir=cache).to_list()
        )
    card = (release.path / "README.md").read_text()
    for key in ("thinking_blocks", "content_parts", "extra", "reasoning_content"):
        assert f"| `{key}` |" in card

    again = build_release(thinking_inputs(), CONFIG, tmp_path / "other-root", rows_per_shard=4)
    assert again.version == release.version
    for name in release.files:
        assert (again.path / name).read_bytes() == (release.path / name).read_bytes()


def test_signatures_and_redacted_data_are_not_keys_but_thinking_text_is_scanned():
    key = FAKE_KEYS["anthropic"]
    blocks = [
        {"type": "thinking", "thinking": "hm", "signature": LUCKY_SIGNATURE, "data": None},
        {"type": "redacted_thinking", "thinking": None, "signature": None, "data": LUCKY_SIGNATURE},
    ]
    assert scan_rows("t", [{"messages": [{"content": None, "thinking_blocks": blocks}]}]) == []
    leaky = [{"type": "thinking", "thinking": f"the key is {key}", "signature": f"not base64: {key}", "data": None}]
    hits = scan_rows("t", [{"messages": [{"content": LUCKY_SIGNATURE, "thinking_blocks": leaky}]}])
    assert sorted((h.field, h.kind) for h in hits) == [
        ("messages[0].content", "google_api_key"),
        ("messages[0].thinking_blocks[0].signature", "anthropic"),
        ("messages[0].thinking_blocks[0].thinking", "anthropic"),
    ]


fragments = st.sampled_from(
    sorted(FAKE_KEYS.values())
    + [
        "sk-",
        "sk-ant-",
        "hf_",
        "AKIA",
        "ASIA",
        "AIza",
        "ghp_",
        "github_pat_",
        "xoxb-",
        "-----BEGIN ",
        "PRIVATE KEY-----",
        "Authorization: ",
        "AUTHORIZATION=",
        "bearer ",
        "task-",
        "A",
        "x",
        "1",
        "_",
        "-",
        "+",
        "/",
        " ",
        "\n",
        "é",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(fragments, max_size=30).map("".join))
def test_scan_text_finds_what_the_full_pattern_finds_everywhere(text):
    assert list(scan_text(text)) == [(m.lastgroup, mask(m.group())) for m in _SECRET.finditer(text)]
