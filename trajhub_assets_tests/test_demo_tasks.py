"""The bundled demo task set: OctoCodingBench-shaped records whose repos fail their
tests until the reference patch is applied.

Standard library and pytest only, so the task set can be checked while the
trajhub_assets package itself is still changing.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[1] / "trajhub_assets" / "tasks" / "demo"
TASKS_FILE = DEMO_DIR / "tasks.jsonl"

OCTO_FIELDS = {
    "instance_id": str,
    "user_query": list,
    "system_prompt": str,
    "category": str,
    "image": str,
    "workspace_abs_path": str,
    "scaffold": dict,
    "checklist": dict,
}
RUNNABLE_FIELDS = {"workspace_source": str, "test_command": str, "reference_patch": str}
CATEGORIES = {"SP", "User Query", "Claude.md", "AGENTS.md", "Skill", "memory"}
CHECK_TYPES = {"compliance", "implementation", "understanding", "testing", "modification", "configuration"}
# The instruction file a task of each category must ship for its checklist to be judgeable.
INSTRUCTION_FILES = {"AGENTS.md": "AGENTS.md", "Claude.md": "CLAUDE.md", "memory": "MEMORY.md"}
INSTANCE_ID = re.compile(r"^demo-[A-Za-z0-9._-]+$")
SUMMARY = re.compile(r"^FAILED \((?P<counts>[^)]*)\)$", re.MULTILINE)


def load_tasks() -> list[dict]:
    with TASKS_FILE.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


TASKS = load_tasks()
TASK_IDS = [task["instance_id"] for task in TASKS]


def run_test_command(task: dict, workspace: Path) -> subprocess.CompletedProcess:
    # No bytecode: the workspace should hold only what the task and patch put there.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        task["test_command"],
        shell=True,
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def failed_count(output: str) -> int:
    """Failures plus errors from unittest's final `FAILED (failures=N, errors=M)` line."""
    match = SUMMARY.search(output)
    if match is None:
        return 0
    counts = dict(part.strip().split("=") for part in match.group("counts").split(","))
    return int(counts.get("failures", 0)) + int(counts.get("errors", 0))


def passed_count(output: str) -> int:
    return len(re.findall(r" \.\.\. ok$", output, re.MULTILINE))


def copy_workspace(task: dict, tmp_path: Path) -> Path:
    workspace = tmp_path / task["instance_id"]
    shutil.copytree(DEMO_DIR / task["workspace_source"], workspace)
    return workspace


def git(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, timeout=60)


# --- the catalog as a whole -------------------------------------------------------------


def test_task_set_size_and_unique_ids():
    assert len(TASKS) >= 6
    assert len(set(TASK_IDS)) == len(TASK_IDS), "instance_id values must be unique"


def test_categories_cover_several_kinds():
    categories = {task["category"] for task in TASKS}
    assert categories <= CATEGORIES
    assert len(categories) >= 4, categories


def test_some_task_has_successive_queries():
    assert any(len(task["user_query"]) >= 2 for task in TASKS)


# --- each record ------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_record_has_octocodingbench_fields(task):
    for field, kind in {**OCTO_FIELDS, **RUNNABLE_FIELDS}.items():
        assert isinstance(task.get(field), kind), f"{task.get('instance_id')}: field {field!r} must be {kind.__name__}"
    assert INSTANCE_ID.match(task["instance_id"]), task["instance_id"]
    assert task["category"] in CATEGORIES
    assert task["user_query"] and all(isinstance(q, str) and q.strip() for q in task["user_query"])
    assert task["image"] == "trajhub-demo:py311"
    assert task["workspace_abs_path"] == f"/workspace/{task['instance_id']}"
    assert task["scaffold"] == {"name": "builtin", "version": "1"}
    if "expected_skill" in task:
        assert isinstance(task["expected_skill"], str) and task["expected_skill"]


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_checklist_shape(task):
    checks = []
    for name, category in task["checklist"].items():
        assert isinstance(category.get("description"), str) and category["description"], name
        assert isinstance(category.get("checks"), list) and category["checks"], name
        checks += category["checks"]
    assert 4 <= len(checks) <= 10, f"{task['instance_id']}: {len(checks)} checks"
    for check in checks:
        assert set(check) == {"check_id", "description", "check_type"}, check
        assert all(isinstance(value, str) and value for value in check.values()), check
        assert check["check_type"] in CHECK_TYPES, check
    check_ids = [check["check_id"] for check in checks]
    assert len(set(check_ids)) == len(check_ids), f"{task['instance_id']}: duplicate check_id"


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_workspace_and_instruction_files(task):
    workspace = DEMO_DIR / task["workspace_source"]
    assert workspace.is_dir()
    assert (DEMO_DIR / task["reference_patch"]).is_file()
    # The sandbox runs `git init` itself, and bytecode would leak into the packaged data.
    assert not list(workspace.rglob(".git")) and not list(workspace.rglob("__pycache__"))
    assert (workspace / "tests").is_dir()
    if task["category"] in INSTRUCTION_FILES:
        assert (workspace / INSTRUCTION_FILES[task["category"]]).is_file()
    if task["category"] == "Skill":
        skill = workspace / "skills" / task["expected_skill"] / "SKILL.md"
        assert f"name: {task['expected_skill']}" in skill.read_text(encoding="utf-8")
    if task["system_prompt"] == "":
        assert task["category"] != "SP", "an SP task needs a system prompt to check against"


# --- the bug is real and the reference patch fixes it -----------------------------------


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_tests_fail_before_the_fix(task, tmp_path):
    result = run_test_command(task, copy_workspace(task, tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert failed_count(output) >= 1, output
    # Some tests pass already: the suite runs, it is the behaviour that is wrong.
    assert passed_count(output) >= 1, output


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_reference_patch_makes_tests_pass(task, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed; the sandbox image applies patches with git")
    workspace = copy_workspace(task, tmp_path)
    patch = DEMO_DIR / task["reference_patch"]
    assert git(workspace, "init", "-q").returncode == 0
    applied = git(workspace, "apply", "--whitespace=error", str(patch))
    assert applied.returncode == 0, applied.stderr
    result = run_test_command(task, workspace)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^OK$", output, re.MULTILINE), output
    assert failed_count(output) == 0 and passed_count(output) >= 3, output


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_reference_patch_applies_with_patch_p1(task, tmp_path):
    if shutil.which("patch") is None:
        pytest.skip("GNU patch is not installed")
    workspace = copy_workspace(task, tmp_path)
    result = subprocess.run(
        ["patch", "-p1", "--dry-run", "--batch", "-i", str(DEMO_DIR / task["reference_patch"])],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
