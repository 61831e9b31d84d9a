"""The local sandbox backend, collect_outcome and the test-summary parser (no Docker needed)."""

import logging
import time
from pathlib import Path

import pytest

from trajhub_assets.errors import RecordError
from trajhub_assets.sandbox import (
    Limits,
    SandboxError,
    SandboxTimeout,
    collect_outcome,
    make_sandbox,
    parse_test_counts,
)
from trajhub_assets.tasks.catalog import read_jsonl

DEMO_TASKS = Path(__file__).parents[1] / "trajhub_assets" / "tasks" / "demo" / "tasks.jsonl"


def demo_task(instance_id: str = "demo-csv-quoting") -> dict:
    return next(item.record for item in read_jsonl(DEMO_TASKS) if item.record["instance_id"] == instance_id)


def running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 of some machines never reaps orphans)."""
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    except FileNotFoundError:
        return False


@pytest.fixture
def task(tmp_path) -> dict:
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("def add(a, b):\n    return a - b\n")
    (source / "tests").mkdir()
    (source / "tests" / "test_add.py").write_text(
        "import unittest\nfrom pkg import add\n\n"
        "class AddTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
    )
    return {
        "instance_id": "tiny-add",
        "image": "trajhub-demo:py311",
        "workspace_abs_path": "/workspace/tiny",
        "workspace_source": str(source),
        "test_command": "python3 -m unittest discover -s tests -v",
    }


def test_exec_read_write_in_a_copy_of_the_workspace(task, monkeypatch):
    monkeypatch.setenv("TRAJHUB_TEST_SECRET", "s3cret")
    with make_sandbox(task, backend="local") as sandbox:
        assert sandbox.backend == "local"
        assert Path(sandbox.workspace).name == "tiny"
        assert sandbox.workspace != task["workspace_source"]
        result = sandbox.exec("pwd; echo oops >&2; exit 3")
        assert (result.returncode, result.stdout.strip(), result.stderr) == (3, sandbox.workspace, "oops\n")
        assert not result.success and not result.timed_out
        assert sandbox.exec(["ls", "pkg"]).stdout.split() == ["__init__.py"]
        assert sandbox.exec("pwd", cwd="tests").stdout.strip() == f"{sandbox.workspace}/tests"
        assert sandbox.exec("echo $GREETING", env={"GREETING": "hi"}).stdout == "hi\n"
        assert "s3cret" not in sandbox.exec("env").stdout  # host secrets stay out

        assert "return a - b" in sandbox.read_file("pkg/__init__.py")
        sandbox.write_file("new/dir/notes.txt", "written")
        assert sandbox.exec("cat new/dir/notes.txt").stdout == "written"
        assert sandbox.read_file(f"{sandbox.workspace}/new/dir/notes.txt", text=False) == b"written"
        with pytest.raises(FileNotFoundError):
            sandbox.read_file("missing.txt")
        assert sandbox.exec(["no-such-program-xyz"]).returncode == 127
        workspace = Path(sandbox.workspace)
    assert not workspace.exists()
    assert not (Path(task["workspace_source"]) / "new").exists()  # the source is untouched


def test_weak_isolation_is_logged(task, caplog):
    options = {"network": "internal", "docker_host": None}  # callers need not know the backend
    with caplog.at_level(logging.WARNING), make_sandbox(task, backend="local", **options):
        pass
    assert "weak isolation" in caplog.text


def test_hanging_command_and_its_children_are_killed_at_the_timeout(task):
    with make_sandbox(task, backend="local") as sandbox:
        started = time.monotonic()
        result = sandbox.exec("sleep 60 & echo $! > child.pid; echo started; wait", timeout=1)
        assert time.monotonic() - started < 10
        assert result.timed_out and result.returncode == 137 and result.stdout == "started\n"
        child = int(sandbox.read_file("child.pid"))
        time.sleep(0.2)
        assert not running(child)


def test_background_child_does_not_block_and_is_killed_at_cleanup(task):
    with make_sandbox(task, backend="local") as sandbox:
        started = time.monotonic()
        result = sandbox.exec("sleep 60 & echo $!")
        assert result.success and time.monotonic() - started < 5
        child = int(result.stdout)
        assert running(child)  # while the sandbox lives
    time.sleep(0.2)
    assert not running(child)


def test_run_wall_clock_cuts_execs_and_then_refuses(task):
    with make_sandbox(task, backend="local", limits=Limits(run_timeout=2)) as sandbox:
        result = sandbox.exec("sleep 60", timeout=60)
        assert result.timed_out and result.seconds < 5
        assert sandbox.timed_out
        with pytest.raises(SandboxTimeout):
            sandbox.exec("true")
        outcome = collect_outcome(sandbox, task)
    assert outcome.timed_out and outcome.tests_total is None and "wall-clock" in outcome.error


def test_exception_inside_with_still_cleans_up(task):
    with pytest.raises(RuntimeError, match="agent crashed"):
        with make_sandbox(task, backend="local") as sandbox:
            workspace = Path(sandbox.workspace)
            raise RuntimeError("agent crashed")
    assert not workspace.exists()


def test_output_is_capped_keeping_head_and_tail(task):
    with make_sandbox(task, backend="local", limits=Limits(output_bytes=10_000)) as sandbox:
        result = sandbox.exec("echo FIRST; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo LAST")
    assert result.stdout.startswith("FIRST") and result.stdout.rstrip().endswith("LAST")
    assert len(result.stdout) < 11_000 and "bytes of output dropped" in result.stdout


def test_bad_task_records_name_the_field(task, tmp_path):
    with pytest.raises(RecordError, match="workspace_source"):
        make_sandbox({**task, "workspace_source": None}, backend="local").start()
    with pytest.raises(RecordError, match="workspace_source"):
        make_sandbox({**task, "workspace_source": str(tmp_path / "nope")}, backend="local").start()
    with pytest.raises(SandboxError, match="backend"):
        make_sandbox(task, backend="vm")


def test_collect_outcome_before_and_after_a_fix(task):
    with make_sandbox(task, backend="local") as sandbox:
        before = collect_outcome(sandbox, task)
        sandbox.write_file("pkg/__init__.py", "def add(a, b):\n    return a + b\n")
        sandbox.write_file("pkg/extra.py", "X = 1\n")
        after = collect_outcome(sandbox, task)
    assert before.diff == "" and before.test_exit_code == 1 and not before.resolved
    assert (before.tests_passed, before.tests_failed, before.tests_total) == (0, 1, 1)
    assert (after.tests_passed, after.tests_failed, after.tests_total) == (1, 0, 1)
    assert after.resolved and after.test_exit_code == 0 and after.diff_exit_code == 0
    assert "+    return a + b" in after.diff and "b/pkg/extra.py" in after.diff
    assert "__pycache__" not in after.diff
    assert "Ran 1 test" in after.test_output_tail
    assert after.backend == "local" and after.run_seconds >= after.test_seconds > 0
    assert not after.timed_out and after.error is None


def test_collect_outcome_on_a_demo_task_with_its_reference_patch():
    task = demo_task()
    with make_sandbox(task, backend="local") as sandbox:
        before = collect_outcome(sandbox, task)
        sandbox.write_file("../reference.patch", Path(task["reference_patch"]).read_text())
        assert sandbox.exec("git apply ../reference.patch").success
        after = collect_outcome(sandbox, task)
    assert before.tests_failed > 0 and before.test_exit_code != 0
    assert after.resolved and after.tests_total == before.tests_total
    changed = [
        line
        for line in Path(task["reference_patch"]).read_text().splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert all(line in after.diff.splitlines() for line in changed)


def test_task_without_test_command_still_gets_its_diff(task):
    task = {**task, "test_command": None}
    with make_sandbox(task, backend="local") as sandbox:
        sandbox.write_file("README", "hi\n")
        outcome = collect_outcome(sandbox, task)
    assert "+hi" in outcome.diff and outcome.test_exit_code is None and outcome.tests_total is None


@pytest.mark.parametrize(
    "output, counts",
    [
        ("Ran 9 tests in 0.003s\n\nOK\n", (9, 0, 9)),
        ("Ran 9 tests in 0.003s\n\nOK (skipped=2)\n", (7, 0, 7)),
        ("Ran 9 tests in 0.003s\n\nFAILED (failures=5)\n", (4, 5, 9)),
        ("Ran 10 tests in 1.2s\nFAILED (failures=1, errors=2, skipped=3, expected failures=1)\n", (4, 3, 7)),
        ("Ran 2 tests in 0s\nOK\n...\nRan 3 tests in 0s\nFAILED (errors=1)\n", (4, 1, 5)),
        ("===== 3 failed, 10 passed, 1 skipped in 0.12s =====\n", (10, 3, 13)),
        ("..F\nFAILED tests/test_x.py::test_y - assert 1 == 2\n1 failed, 2 passed, 1 warning in 0.05s\n", (2, 1, 3)),
        ("==== 1 passed, 2 errors in 62.00s (0:01:02) ====\n", (1, 2, 3)),
        ("==== 1 error in 0.10s ====\n", (0, 1, 1)),
        ("============ no tests ran in 0.01s ============\n", (0, 0, 0)),
        ("Traceback (most recent call last):\nImportError: boom\n", None),
    ],
)
def test_parse_test_counts(output, counts):
    assert parse_test_counts(output) == counts


# -- The host address on Docker's bridge, from both shapes of its attributes ----------------


def test_the_bridge_gateway_is_read_from_ipam_when_given_else_from_its_interface(monkeypatch):
    from trajhub_assets.sandbox import docker as docker_backend

    with_gateway = {"IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}}
    assert docker_backend.gateway_of(with_gateway, local_engine=False) == "172.17.0.1"
    # As `docker network inspect bridge` gives it when the engine adopts existing bridge state.
    without = {
        "IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]},
        "Options": {"com.docker.network.bridge.name": "br-test0"},
    }
    asked = []
    monkeypatch.setattr(docker_backend, "interface_address", lambda name: asked.append(name) or "10.9.8.1")
    assert docker_backend.gateway_of(without, local_engine=True) == "10.9.8.1"
    assert asked == ["br-test0"]
    monkeypatch.setattr(docker_backend, "interface_address", lambda name: None)
    with pytest.raises(SandboxError, match=r"no IPv4 Gateway; interface br-test0 has no IPv4 address"):
        docker_backend.gateway_of(without, local_engine=True)
    with pytest.raises(SandboxError, match="the engine is remote"):
        docker_backend.gateway_of(without, local_engine=False)


def test_interface_address_reads_a_real_interface():
    from trajhub_assets.sandbox.docker import interface_address

    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("no-such-if0") is None
