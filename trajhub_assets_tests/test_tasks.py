import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, materialize

from trajhub_assets.errors import RecordError
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.assets import tasks
from trajhub_assets.tasks.catalog import check_unique, read_hf_dataset, read_jsonl, table_to_records, tasks_to_table
from trajhub_assets.tasks.schema import TASKS
from trajhub_assets_tests.shared_data import OCTOCODINGBENCH_TASKS as REAL_TASKS


def real_records() -> list[dict]:
    return [json.loads(line) for line in REAL_TASKS.read_text().splitlines()]


def test_the_72_real_records_load_unchanged():
    items = check_unique(read_jsonl(REAL_TASKS))
    assert len(items) == 72
    table = tasks_to_table(items)
    assert table.schema == TASKS.schema
    # the stored rows give back exactly the records that were read
    assert table_to_records(table) == real_records()


def test_a_file_with_a_byte_order_mark_and_crlf_line_ends_is_valid(tmp_path):
    """What editors on Windows write; the 72 real records, re-saved that way, read the same."""
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in real_records()]
    path.write_bytes("\ufeff".encode() + "\r\n".join(lines).encode() + b"\r\n")
    assert table_to_records(tasks_to_table(check_unique(read_jsonl(path)))) == real_records()
    from trajhub_assets.cli import main

    main(["check-tasks", str(path)])  # as `trajhub check-tasks` would, which said "Unexpected UTF-8 BOM"


def test_a_line_separator_inside_a_json_string_is_not_a_line_end(tmp_path):
    record = {**real_records()[0], "note": "one\u2028two\x0cthree"}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [item.record["note"] for item in read_jsonl(path)] == ["one\u2028two\x0cthree"]


def test_unknown_fields_are_kept(tmp_path):
    record = {**real_records()[0], "difficulty": "hard"}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert table_to_records(tasks_to_table(list(read_jsonl(path)))) == [record]


def test_hugging_face_source_via_datasets(tmp_path):
    # `datasets` turns the checklist mapping into a struct over every category; a task's
    # categories must come back as its own, with no None-valued extras.
    data = tmp_path / "hub_copy"
    data.mkdir()
    records = real_records()[:5]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = list(read_hf_dataset(str(data), split="train"))
    assert [i.record["instance_id"] for i in items] == [r["instance_id"] for r in records]
    assert [set(i.record["checklist"]) for i in items] == [set(r["checklist"]) for r in records]
    assert items[0].source.startswith("hf:")


def corrupt(tmp_path, how: str) -> Path:
    lines = REAL_TASKS.read_text().splitlines()[:4]
    second = json.loads(lines[1])
    if how == "bad json":
        lines[1] = lines[1].replace('"instance_id":', '"instance_id"', 1)
    elif how == "missing field":
        del second["category"]
        lines[1] = json.dumps(second)
    elif how == "wrong type":
        second["user_query"] = "not a list"
        lines[1] = json.dumps(second)
    elif how == "nested wrong type":
        first_category = next(iter(second["checklist"]))
        second["checklist"][first_category]["checks"][2]["check_id"] = 7
        lines[1] = json.dumps(second)
    elif how == "duplicate id":
        lines[3] = lines[1]
    elif how == "truncated last line":
        lines[3] = lines[3][: len(lines[3]) // 2]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + ("" if how == "truncated last line" else "\n"))
    return path


SECOND_ID = json.loads(REAL_TASKS.read_text().splitlines()[1])["instance_id"]


@pytest.mark.parametrize(
    "how, expected",
    [
        ("bad json", r"tasks\.jsonl:2: invalid JSON: Expecting ':' delimiter"),
        ("missing field", rf"tasks\.jsonl:2, record '{SECOND_ID}', field 'category': 'category' is a required"),
        (
            "wrong type",
            rf"tasks\.jsonl:2, record '{SECOND_ID}', field 'user_query': 'not a list' is not of type 'array'",
        ),
        (
            "nested wrong type",
            rf"tasks\.jsonl:2, record '{SECOND_ID}', field 'checklist\..+\.checks\.2\.check_id': 7 is not",
        ),
        (
            "duplicate id",
            rf"tasks\.jsonl:4, record '{SECOND_ID}', field 'instance_id': "
            r"duplicate instance_id, first seen at .*tasks\.jsonl:2",
        ),
        ("truncated last line", r"tasks\.jsonl:4: invalid JSON \(truncated last line\?\)"),
    ],
)
def test_bad_records_name_file_line_record_and_field(tmp_path, how, expected):
    with pytest.raises(RecordError, match=expected):
        check_unique(read_jsonl(corrupt(tmp_path, how)))


def materialize_tasks(tmp_path, task_file: Path, instance):
    config = tmp_path / f"project-{task_file.stem}.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"path": str(task_file)}]}))
    return materialize(
        [tasks],
        instance=instance,
        raise_on_error=False,
        resources={"store": StoreResource(root=str(tmp_path / "home")), "project": ProjectResource(path=str(config))},
    )


@pytest.mark.parametrize("how", ["bad json", "missing field", "duplicate id", "truncated last line"])
def test_a_failed_load_leaves_the_stored_catalog_intact(tmp_path, how):
    instance = DagsterInstance.ephemeral()
    good = tmp_path / "good" / "tasks.jsonl"
    good.parent.mkdir()
    good.write_text(REAL_TASKS.read_text())
    assert materialize_tasks(tmp_path, good, instance).success
    stored = tmp_path / "home/tables/tasks/data.parquet"
    before = stored.read_bytes()

    result = materialize_tasks(tmp_path, corrupt(tmp_path, how), instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert failure.cause.cls_name == "RecordError"
    assert "tasks.jsonl" in failure.cause.message
    assert stored.read_bytes() == before


def test_materialized_catalog_metadata(tmp_path):
    result = materialize_tasks(tmp_path, REAL_TASKS, DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("tasks")[0].metadata
    assert metadata["rows"].value == 72
    assert "| Skill | 17 |" in metadata["categories"].value
