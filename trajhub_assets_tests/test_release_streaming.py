"""hf_dataset_release streams shard by shard and writes what the whole-table release wrote.

The store: synthetic runs of benchmarks/synthetic_runs.py (real load, real merge; lengths,
thinking blocks, tool errors vary per model and instance), copied as benchmarks/release_scaling.py
copies them, plus a model whose name sorts apart from its partition key ("scale0" sorts after
"scale/…" by name, before "scale__…" by key) and a run without rewards.
"""

import hashlib
import json
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.config import ProjectConfig, ReleaseConfig
from trajhub_assets.release.assets import release_inputs
from trajhub_assets.release.release import build_release, release_tables
from trajhub_assets.release.secrets import SecretLeakError, SecretScanner
from trajhub_assets.rewards.schema import TRAJECTORY_REWARDS
from trajhub_assets.store import Store
from trajhub_assets_tests.test_release import CONFIG as TEST_CONFIG
from trajhub_assets_tests.test_release import FAKE_KEYS, make_inputs, thinking_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from release_scaling import build_store, build_template, copy_partition  # noqa: E402

CONFIG = ProjectConfig(tasks=[{"path": "tasks.jsonl"}], release=ReleaseConfig(name="golden", license="mit"))
ROWS_PER_SHARD = 20  # shards cut inside (model, instance) groups and across them
# What the whole-table release (before streaming, commit f469c9d) wrote for this store, with the
# writers below: the data's hash (the version: every shard's hash), and the manifest's sha256
# (every file's hash: shards, README.md, calibration.md) since the card tells pairs by source.
GOLDEN = {
    "writers": {"datasets": "5.2.0", "pyarrow": "26.0.1"},
    "version": "sha-3c619a61d410",
    "manifest_sha256": "ac105b570468c594a8e3f3931c1023eef6730a3593051c51cfb42f0227dc3a7c",
    "rows": {"trajectories": 49, "preferences": 38, "step_rewards": 1113, "tasks": 12},
    # every shard's rows, as read back (content_digest): the same whatever writer wrote the bytes
    "content_sha256": "da02b0d6b0256a89e00e2aa6075975eb1df5f8613bf3fab0dcccf6ed23becc81",
}


def content_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((directory / "data").rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        digest.update(f"{path.relative_to(directory)}\0{json.dumps(rows, sort_keys=True, default=str)}\n".encode())
    return digest.hexdigest()


def make_store(root: Path) -> Store:
    template, partitions, instances = build_template(root / "template", seed=7, models=4, instances=6)
    build_store(root / "store", template, partitions, instances, n=2 * len(partitions))
    store = Store(root / "store")
    apart = {"model": "scale0", "instance": instances[0]}
    copy_partition(store, template, partitions[1], apart, 9)
    store.write(TRAJECTORY_REWARDS, TRAJECTORY_REWARDS.schema.empty_table(), apart)  # a run without rewards
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return make_store(tmp_path_factory.mktemp("streaming"))


def release_of(store: Store, root: Path, rows_per_shard: int = ROWS_PER_SHARD):
    return build_release(release_inputs(store, CONFIG), CONFIG.release, root, rows_per_shard=rows_per_shard)


def test_the_streamed_release_is_the_whole_table_release_byte_for_byte(store, tmp_path):
    release = release_of(store, tmp_path)
    manifest = (release.path / "manifest.json").read_bytes()
    assert release.rows == GOLDEN["rows"]
    assert content_digest(release.path) == GOLDEN["content_sha256"]  # the same rows in the same shards
    if {"datasets": datasets.__version__, "pyarrow": pa.__version__} == GOLDEN["writers"]:
        assert release.version == GOLDEN["version"]
        assert hashlib.sha256(manifest).hexdigest() == GOLDEN["manifest_sha256"], json.loads(manifest)["files"]
    else:  # other writers write other bytes: the release must still be the same bytes every time
        again = release_of(store, tmp_path / "again")
        assert (again.version, (again.path / "manifest.json").read_bytes()) == (release.version, manifest)


TABLES = [release_tables(make_inputs()), release_tables(thinking_inputs())]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_sparse_scan_finds_what_walking_every_row_finds(data):
    """The release walks only rows where Arrow finds a key can start; the hits are the same."""
    tables = data.draw(st.sampled_from(TABLES))
    name = data.draw(st.sampled_from(["trajectories", "preferences", "tasks"]))
    rows = tables[name].to_pylist()
    for _ in range(data.draw(st.integers(0, 3))):
        row = data.draw(st.sampled_from(rows))
        key = FAKE_KEYS[data.draw(st.sampled_from(sorted(FAKE_KEYS)))]
        if name == "tasks":
            row["system_prompt"] = f"export KEY={key}"
            continue
        messages = row["messages" if name == "trajectories" else data.draw(st.sampled_from(["prompt", "chosen"]))]
        message = data.draw(st.sampled_from(messages))
        message["content"] = f"{message['content'] or ''} {key}" if data.draw(st.booleans()) else key
    table = pa.Table.from_pylist(rows, schema=tables[name].schema)
    start = data.draw(st.integers(0, 5000))
    walked = SecretScanner().table(name, table, start=start)
    assert SecretScanner().sparse_table(name, table, start=start) == walked


if __name__ == "__main__":  # the golden values, printed by the code under test
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = release_of(make_store(Path(tmp)), Path(tmp) / "out")
        print(
            json.dumps(
                {
                    "version": built.version,
                    "manifest_sha256": hashlib.sha256((built.path / "manifest.json").read_bytes()).hexdigest(),
                    "rows": built.rows,
                }
            )
        )


def test_a_key_in_a_later_shard_is_never_written_and_nothing_is_left(tmp_path, monkeypatch):
    key = FAKE_KEYS["huggingface"]
    inputs = make_inputs()
    (r5,) = [t for trajectories, _, _ in inputs.runs for t in trajectories if t["meta"]["run_id"] == "r5"]
    r5["messages"][3]["content"] = f"env: HF_TOKEN={key}"
    written = []  # (config/shard, whether it holds the key)
    to_parquet = datasets.Dataset.to_parquet

    def recorded(self, path, **options):
        written.append(("/".join(Path(path).parts[-2:]), key in str(self.data.to_pydict())))
        return to_parquet(self, path, **options)

    monkeypatch.setattr(datasets.Dataset, "to_parquet", recorded)
    with pytest.raises(SecretLeakError) as caught:
        build_release(inputs, TEST_CONFIG, tmp_path, rows_per_shard=2)
    # rows: m-a r1, m-a r4, m-b r2, m-b r3, m-b r5: the key is row 4, in the third shard
    assert "trajectories row 4, field messages[3].content: huggingface key" in str(caught.value)
    assert ("trajectories/part-00000.parquet", False) in written and not any(held for _, held in written)
    assert "trajectories/part-00002.parquet" not in dict(written)
    assert list((tmp_path / "releases" / TEST_CONFIG.name).iterdir()) == []  # the staging directory went
