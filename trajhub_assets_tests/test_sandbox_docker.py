"""The Docker sandbox against a real engine and the demo image (built locally, nothing pulled).

The engine is started the way CI starts it (scripts/docker_setup.sh) when we are root.
Where no engine can run, these tests are skipped with a loud reason, except under CI,
where that is a failure: CI must run them.
"""

import http.server
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from trajhub_assets.sandbox import (
    DockerSandbox,
    Limits,
    SandboxTimeout,
    collect_outcome,
    make_sandbox,
    remove_orphans,
)
from trajhub_assets.sandbox import docker as docker_backend
from trajhub_assets.sandbox.images import ensure_demo_image
from trajhub_assets.tasks.catalog import read_jsonl

ROOT = Path(__file__).parents[1]
DEMO_TASKS = ROOT / "trajhub_assets" / "tasks" / "demo" / "tasks.jsonl"
SETUP = ROOT / "scripts" / "docker_setup.sh"


@pytest.fixture(scope="module")
def client(docker_engine):
    return docker_engine


@pytest.fixture
def run_id(client):
    """A run id whose containers must all be gone when the test ends."""
    run_id = f"test-{uuid.uuid4().hex[:12]}"
    yield run_id
    left = containers_of(client, run_id)
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind by run {run_id}: {[c.name for c in left]}"


def containers_of(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"trajhub.run_id={run_id}"})


def demo_task(instance_id: str = "demo-csv-quoting") -> dict:
    return next(item.record for item in read_jsonl(DEMO_TASKS) if item.record["instance_id"] == instance_id)


def test_exec_read_write_with_the_workspace_at_its_absolute_path(client, run_id):
    task = demo_task()
    source = Path(task["workspace_source"])
    with make_sandbox(task, backend="docker", run_id=run_id) as sandbox:
        assert sandbox.backend == "docker"
        assert sandbox.workspace == task["workspace_abs_path"]
        assert sandbox.exec("pwd").stdout.strip() == task["workspace_abs_path"]
        listed = sandbox.exec("find . -path ./.git -prune -o -type f -print | sort").stdout.split()
        expected = sorted(
            f"./{p.relative_to(source)}" for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        assert listed == expected
        assert sandbox.read_file("csvout/writer.py") == (source / "csvout" / "writer.py").read_text()
        assert "trajhub: initial workspace" in sandbox.exec("git log --oneline").stdout
        assert sandbox.exec("git status --porcelain").stdout == ""

        result = sandbox.exec("echo out; echo err >&2; exit 4")
        assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
        assert sandbox.exec(["python3", "-c", "print(2 + 2)"]).stdout == "4\n"
        assert sandbox.exec("pwd", cwd="tests").stdout.strip() == f"{sandbox.workspace}/tests"
        assert sandbox.exec("echo $GREETING", env={"GREETING": "hi"}).stdout == "hi\n"

        sandbox.write_file("notes/deep/new.txt", "written\n")
        assert sandbox.exec("cat notes/deep/new.txt").stdout == "written\n"
        sandbox.write_file("/tmp/blob.bin", bytes(range(256)))
        assert sandbox.read_file("/tmp/blob.bin", text=False) == bytes(range(256))
        with pytest.raises(FileNotFoundError):
            sandbox.read_file("missing.txt")
        started = time.monotonic()  # a background child holding stdout must not hold us
        assert sandbox.exec("sleep 60 &").success and time.monotonic() - started < 10
    assert not containers_of(client, run_id)


def test_limits_labels_and_host_entry_are_applied(client, run_id):
    limits = Limits(cpus=1.5, memory="512m", pids=128)
    with make_sandbox(demo_task(), backend="docker", run_id=run_id, limits=limits) as sandbox:
        sandbox.container.reload()
        host = sandbox.container.attrs["HostConfig"]
        assert host["NanoCpus"] == 1_500_000_000
        assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2
        assert host["PidsLimit"] == 128
        assert host["Init"] is True
        assert "host.docker.internal:host-gateway" in host["ExtraHosts"]
        assert client.networks.get(host["NetworkMode"]).name == docker_backend.INTERNAL_NETWORK
        labels = sandbox.container.labels
        assert labels["trajhub.run_id"] == run_id
        assert labels["trajhub.created_by"] == "trajhub-sandbox"
        assert labels["trajhub.pid"] == str(os.getpid())
        assert labels["trajhub.instance_id"] == "demo-csv-quoting"
        # The kernel holds the container to them, not just Docker's bookkeeping (cgroup v1 or v2).
        cgroup = sandbox.exec(
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
            "2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"
        ).stdout.split()
        assert cgroup == [str(512 * 1024**2), "128"]


def test_hanging_command_is_killed_at_its_timeout(client, run_id):
    with make_sandbox(demo_task(), backend="docker", run_id=run_id) as sandbox:
        started = time.monotonic()
        result = sandbox.exec("echo started; sleep 600", timeout=2)
        assert time.monotonic() - started < 15
        assert result.timed_out and not result.success and result.stdout == "started\n"
        sleeping = sandbox.exec("cat /proc/[0-9]*/comm | grep -c '^sleep$'").stdout.strip()
        assert sleeping == "1"  # the container's own clock; the command's sleep is gone
        assert sandbox.exec("echo still usable").success


def test_exec_that_ignores_its_timeout_costs_the_container_not_us(client, run_id, monkeypatch):
    monkeypatch.setattr(docker_backend, "EXEC_GRACE_SECONDS", 1)
    with make_sandbox(demo_task(), backend="docker", run_id=run_id) as sandbox:
        sandbox._timeout_prefix = []  # as in an image without coreutils `timeout`
        started = time.monotonic()
        result = sandbox.exec("sleep 600", timeout=1)
        assert result.timed_out and time.monotonic() - started < 15
        with pytest.raises(SandboxTimeout, match="not running"):
            sandbox.exec("true")


def test_run_wall_clock_kills_the_container(client, run_id):
    task = demo_task()
    with make_sandbox(task, backend="docker", run_id=run_id, limits=Limits(run_timeout=6)) as sandbox:
        started = time.monotonic()
        result = sandbox.exec("sleep 600", timeout=600)
        assert result.timed_out and time.monotonic() - started < 20
        assert sandbox.timed_out
        with pytest.raises(SandboxTimeout):
            sandbox.exec("true")
        outcome = collect_outcome(sandbox, task)
        for _ in range(50):  # its own clock started a moment after ours
            sandbox.container.reload()
            if sandbox.container.status == "exited":
                break
            time.sleep(0.2)
        assert sandbox.container.status == "exited"  # it stopped by itself
    assert outcome.timed_out and outcome.tests_total is None and outcome.diff is None
    assert not containers_of(client, run_id)


def test_exception_inside_with_removes_the_container(client, run_id):
    with pytest.raises(RuntimeError, match="agent crashed"):
        with make_sandbox(demo_task(), backend="docker", run_id=run_id):
            assert len(containers_of(client, run_id)) == 1
            raise RuntimeError("agent crashed")
    assert not containers_of(client, run_id)


def test_failed_start_leaves_no_container(client, run_id):
    task = {**demo_task(), "workspace_source": "/nonexistent/trajhub/workspace"}
    with pytest.raises(Exception, match="workspace_source"):
        with make_sandbox(task, backend="docker", run_id=run_id):
            pass
    assert not containers_of(client, run_id)


def test_orphans_of_a_killed_run_are_removed_and_live_runs_kept(client, run_id):
    orphan_run = f"{run_id}-orphan"
    crashing_run = textwrap.dedent(f"""
        import sys, time
        from trajhub_assets.sandbox import make_sandbox
        from trajhub_assets.tasks.catalog import read_jsonl
        task = next(r.record for r in read_jsonl({str(DEMO_TASKS)!r}))
        make_sandbox(task, backend="docker", run_id={orphan_run!r}).start()
        print("ready", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", crashing_run], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        child.wait()
    try:
        assert len(containers_of(client, orphan_run)) == 1
        with make_sandbox(demo_task(), backend="docker", run_id=run_id):
            removed = remove_orphans(client)
            assert len(containers_of(client, run_id)) == 1  # ours is alive: kept
        assert any(orphan_run in name for name in removed)
        assert not containers_of(client, orphan_run)
    finally:
        for container in containers_of(client, orphan_run):
            container.remove(force=True)


@pytest.fixture
def host_server():
    """An HTTP server on the host, where the recording proxy would listen."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


FETCH = (
    "import sys, urllib.request\n"
    "try: print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
    "except Exception as e: print('unreachable', e)"
)


def test_internal_network_reaches_the_host_but_no_other_container(client, run_id, host_server):
    peer = client.containers.run(
        ensure_demo_image(client),
        ["python3", "-m", "http.server", "8000"],
        detach=True,
        labels={"trajhub.run_id": run_id},
    )  # default bridge
    try:
        peer.reload()
        peer_ip = peer.attrs["NetworkSettings"]["IPAddress"]
        with (
            make_sandbox(demo_task(), backend="docker", run_id=run_id) as sandbox,
            make_sandbox(demo_task(), backend="docker", run_id=run_id) as neighbour,
        ):
            to_host = sandbox.exec(["python3", "-c", FETCH, f"http://host.docker.internal:{host_server}/"])
            assert to_host.stdout.strip() == "200"
            to_peer = sandbox.exec(["python3", "-c", FETCH, f"http://{peer_ip}:8000/"])
            assert to_peer.stdout.startswith("unreachable")  # nothing forwarded out of the network
            neighbour.exec("python3 -m http.server 8000 >/dev/null 2>&1 &")
            neighbour.exec(
                "for i in $(seq 50); do grep -q ':1F40 ' /proc/net/tcp && break; sleep 0.1; done"
            )  # until port 8000 listens
            neighbour.container.reload()
            address = neighbour.container.attrs["NetworkSettings"]["Networks"][docker_backend.INTERNAL_NETWORK][
                "IPAddress"
            ]
            assert neighbour.exec(["python3", "-c", FETCH, "http://127.0.0.1:8000/"]).stdout == "200\n"
            to_neighbour = sandbox.exec(["python3", "-c", FETCH, f"http://{address}:8000/"])
            assert to_neighbour.stdout.startswith("unreachable")  # sandboxes are kept apart
    finally:
        peer.remove(force=True)


def test_no_network_reaches_nothing(client, run_id, host_server):
    with make_sandbox(demo_task(), backend="docker", run_id=run_id, network="none") as sandbox:
        result = sandbox.exec(["python3", "-c", FETCH, f"http://host.docker.internal:{host_server}/"])
    assert result.stdout.startswith("unreachable")


def test_collect_outcome_on_a_demo_task_before_and_after_its_reference_patch(client, run_id):
    task = demo_task()
    patch = Path(task["reference_patch"]).read_text()
    with make_sandbox(task, backend="docker", run_id=run_id) as sandbox:
        assert isinstance(sandbox, DockerSandbox)
        before = collect_outcome(sandbox, task)
        sandbox.write_file("/tmp/reference.patch", patch)
        assert sandbox.exec("git apply /tmp/reference.patch").success
        sandbox.write_file("NOTES.md", "a new file\n")
        after = collect_outcome(sandbox, task)
    assert before.diff == "" and before.test_exit_code != 0 and before.tests_failed > 0
    assert not before.resolved and not before.timed_out
    assert after.resolved and after.tests_failed == 0 and after.tests_total == before.tests_total
    assert after.backend == "docker" and after.diff_exit_code == 0 and after.error is None
    added = [line for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert all(line in after.diff.splitlines() for line in added)
    assert "+a new file" in after.diff and "__pycache__" not in after.diff
    assert f"Ran {after.tests_total} tests" in after.test_output_tail


def test_image_that_carries_its_workspace_and_a_non_root_user(client, run_id):
    """OctoCodingBench-style: no workspace_source, the repository is in the image."""
    dockerfile = (
        f"FROM {ensure_demo_image(client)}\n"
        "RUN useradd -m agent && mkdir -p /app && echo 'x = 1' > /app/mod.py "
        "&& chown -R agent /app\nUSER agent\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag="trajhub-test-user:1", rm=True)
    task = {
        "instance_id": "in-image",
        "image": "trajhub-test-user:1",
        "workspace_abs_path": "/app",
        "test_command": None,
    }
    try:
        with make_sandbox(task, backend="docker", run_id=run_id) as sandbox:
            assert sandbox.exec("whoami").stdout == "agent\n"
            sandbox.exec("echo 'y = 2' >> mod.py && touch new.py")
            outcome = collect_outcome(sandbox, task)
        assert "+y = 2" in outcome.diff and "b/new.py" in outcome.diff
        copied = {**demo_task(), "image": "trajhub-test-user:1"}  # copied in, then handed to agent
        with make_sandbox(copied, backend="docker", run_id=run_id) as sandbox:
            assert sandbox.exec("echo '# edited' >> README.md").success
            assert "+# edited" in collect_outcome(sandbox, copied).diff
    finally:
        client.images.remove("trajhub-test-user:1", force=True)


# -- The internal network and the host address, as engines really vary ----------------------


def _remove_internal_networks(client) -> None:
    for network in client.networks.list(names=[docker_backend.INTERNAL_NETWORK]):
        network.remove()


def test_two_batches_started_together_with_the_network_absent_share_one_network(client, tmp_path):
    _remove_internal_networks(client)
    # Two processes, as two `trajhub run`s: each readies the engine, then runs a sandbox on it.
    script = textwrap.dedent(f"""
        import sys, uuid
        from trajhub_assets.sandbox import make_sandbox
        from trajhub_assets.sandbox.images import prepare_engine
        from trajhub_assets.tasks.catalog import read_jsonl
        task = next(i.record for i in read_jsonl({str(DEMO_TASKS)!r}) if i.record["instance_id"] == "demo-csv-quoting")
        open(sys.argv[1], "w").close()
        while not all(__import__("os").path.exists(p) for p in sys.argv[1:]):
            pass  # both started: now race
        prepare_engine(None, {{task["image"]}})
        with make_sandbox(task, backend="docker", run_id="race-" + uuid.uuid4().hex[:8]) as box:
            print(box.exec("echo ok").stdout.strip())
    """)
    ready = [str(tmp_path / "a"), str(tmp_path / "b")]
    batches = [
        subprocess.Popen(
            [sys.executable, "-c", script, *(ready if i == 0 else ready[::-1])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    outputs = [batch.communicate(timeout=300) for batch in batches]
    for batch, (out, err) in zip(batches, outputs, strict=True):
        assert batch.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert len(client.networks.list(names=[docker_backend.INTERNAL_NETWORK])) == 1


def test_duplicate_networks_trajhub_made_are_healed_and_runs_go_on(client, run_id):
    _remove_internal_networks(client)
    # Docker 20.10 accepts a second network of one name (as two hosts racing would make).
    made = [docker_backend.create_internal_network(client, check_duplicate=False) for _ in range(2)]
    for network in made:
        network.reload()
    assert len(client.networks.list(names=[docker_backend.INTERNAL_NETWORK])) == 2
    with make_sandbox(demo_task(), backend="docker", run_id=run_id) as sandbox:
        assert sandbox.exec("echo ok").stdout == "ok\n"
        sandbox.container.reload()
        attached = set(sandbox.container.attrs["NetworkSettings"]["Networks"])
    left = client.networks.list(names=[docker_backend.INTERNAL_NETWORK])
    assert [n.id for n in left] == [min(made, key=lambda n: (n.attrs["Created"], n.id)).id]
    assert attached == {docker_backend.INTERNAL_NETWORK}


def test_a_network_of_that_name_that_does_not_isolate_is_refused(client, run_id):
    _remove_internal_networks(client)
    open_one = client.networks.create(docker_backend.INTERNAL_NETWORK, driver="bridge")
    try:
        with pytest.raises(docker_backend.SandboxError, match="exists but does not isolate"):
            with make_sandbox(demo_task(), backend="docker", run_id=run_id):
                pass
    finally:
        open_one.remove()


def test_the_host_address_is_found_on_the_real_engine(client):
    bridge = client.networks.get("bridge").attrs
    address = docker_backend.bridge_gateway()
    # What the engine gives host-gateway, seen from inside a container.
    hosts = client.containers.run(
        "trajhub-demo:py311", ["cat", "/etc/hosts"], remove=True, extra_hosts={"host.docker.internal": "host-gateway"}
    ).decode()
    assert f"{address}\thost.docker.internal" in hosts
    without_gateway = {**bridge, "IPAM": {"Config": [{"Subnet": c.get("Subnet")} for c in bridge["IPAM"]["Config"]]}}
    assert docker_backend.gateway_of(without_gateway, local_engine=True) == address
