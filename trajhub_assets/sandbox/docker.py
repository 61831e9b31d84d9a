"""The Docker backend: one container per run, from the task's image.

What it enforces:
- CPU (NanoCpus), memory (no swap beyond it) and pids limits; an init process reaps zombies.
- The run's wall clock: the container's main process is `sleep <run_timeout>`, so the
  container stops by itself at the deadline, even when the process that started it has
  died. Each exec is wrapped in coreutils `timeout` (children killed with it); an exec
  that still does not return is ended by killing the container.
- Removal on every way out of `with`, and `remove_orphans()` for containers whose creator
  died (labels say which run, host and pid made them, and when they expire).
- Network, with `network=`:
  "internal" (default): a Docker network with internal=True and inter-container traffic
  off. Docker's iptables rules drop everything forwarded in or out of it, so the sandbox
  reaches no other machine and no other sandbox. It does reach the host itself:
  `host.docker.internal` maps to the host's docker0 address, where the recording proxy
  listens (bind it to 0.0.0.0 or that address, not 127.0.0.1). Every other host port
  bound beyond loopback is reachable too; nothing narrows that to the proxy's port.
  "bridge": Docker's default network, as open as the host's own routing.
  "none": no network at all; the proxy is not reachable either.
  All of this rests on dockerd managing iptables (its default); with --iptables=false,
  "internal" isolates nothing.
"""

from __future__ import annotations

import fcntl
import io
import logging
import math
import os
import re
import socket
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import PurePosixPath

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from trajhub_assets.errors import RecordError
from trajhub_assets.sandbox.base import (
    CappedBuffer,
    ExecResult,
    Sandbox,
    SandboxError,
    SandboxTimeout,
    cache_dir,
    task_field,
)

log = logging.getLogger(__name__)

CREATED_BY = "trajhub-sandbox"
LABEL_CREATED_BY = "trajhub.created_by"
LABEL_RUN_ID = "trajhub.run_id"
LABEL_INSTANCE_ID = "trajhub.instance_id"
LABEL_HOST = "trajhub.host"
LABEL_PID = "trajhub.pid"
LABEL_EXPIRES_AT = "trajhub.expires_at"  # unix time after which the container is dead weight
INTERNAL_NETWORK = "trajhub-sandbox-internal"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
NETWORKS = ("internal", "bridge", "none")
EXEC_GRACE_SECONDS = 15  # past its timeout, an exec that has not returned costs the container
SETUP_SECONDS = 120  # allowance in expires_at for the time between create and start


def engine_url(docker_host: str | None = None) -> str:
    """Where a client for `docker_host` connects: it, else $DOCKER_HOST, else Docker's default socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def reason(error: BaseException) -> str:
    """A Docker client error in a few words, on one line: the engine's explanation of a refused
    request, else the root cause ("Connection refused"); the client's own message nests three
    libraries' reprs."""
    text = error.explanation if isinstance(error, APIError) else None
    while not text and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    text = text or getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def connect(docker_host: str | None = None, *, timeout: float | None = 120) -> docker.DockerClient:
    """A client for `docker_host` (default: the environment's), or SandboxError when none answers."""
    try:
        # from_env, so that DOCKER_TLS_VERIFY / DOCKER_CERT_PATH apply to a configured tcp:// host too.
        client = docker.from_env(
            timeout=timeout, environment={**os.environ, "DOCKER_HOST": docker_host} if docker_host else None
        )
        client.ping()
    except DockerException as error:
        raise SandboxError(
            f"no Docker engine answers at {engine_url(docker_host)} ({reason(error)}): "
            "start it (scripts/docker_setup.sh as root), point sandbox.docker_host at one "
            "that runs, or set sandbox.backend: local"
        ) from error
    return client


def docker_available(docker_host: str | None = None) -> bool:
    try:
        connect(docker_host, timeout=10).close()
    except SandboxError:
        return False
    return True


class DockerSandbox(Sandbox):
    backend = "docker"

    def __init__(self, task: dict, *, network: str = "internal", docker_host: str | None = None, **kwargs):
        super().__init__(task, **kwargs)
        if network not in NETWORKS:
            raise SandboxError(f"sandbox network {network!r} is not one of {', '.join(NETWORKS)}")
        self.network = network
        self.docker_host = docker_host
        self.container = None
        self._client: docker.DockerClient | None = None
        # Execs block on their output for as long as they run: a client without a read
        # timeout, bounded by the exec's own deadline instead.
        self._exec_client: docker.DockerClient | None = None
        self._timeout_prefix: list[str] = []

    def _start(self) -> None:
        image = task_field(self.task, "image")
        workspace = task_field(self.task, "workspace_abs_path")
        if not workspace.startswith("/"):
            raise RecordError(
                "must be an absolute path",
                source=self.task.get("source", "task record"),
                record_id=self.instance_id,
                field="workspace_abs_path",
            )
        self._client = connect(self.docker_host)
        self._exec_client = connect(self.docker_host, timeout=None)
        try:
            self._create(image, workspace)
        except BaseException:
            self.cleanup()
            raise

    def _create(self, image: str, workspace: str) -> None:
        try:
            user = self._client.images.get(image).attrs["Config"].get("User") or "root"
        except ImageNotFound:
            raise SandboxError(
                f"task {self.instance_id}: image {image!r} is not on this Docker engine; pull it "
                "(docker pull), or for the demo tasks build it with "
                "trajhub_assets.sandbox.images.ensure_demo_image()"
            ) from None
        limits = self.limits
        self.container = self._client.containers.create(
            image,
            ["sleep", str(math.ceil(limits.run_timeout))],
            name=(
                f"trajhub-{_safe_name(self.instance_id)[:40]}-{_safe_name(self.run_id)[:40]}-{uuid.uuid4().hex[:6]}"
            ),  # the same run id may start twice
            labels={
                LABEL_CREATED_BY: CREATED_BY,
                LABEL_RUN_ID: self.run_id,
                LABEL_INSTANCE_ID: self.instance_id,
                LABEL_HOST: socket.gethostname(),
                LABEL_PID: str(os.getpid()),
                LABEL_EXPIRES_AT: str(int(time.time() + limits.run_timeout + SETUP_SECONDS)),
            },
            working_dir=workspace,
            init=True,
            nano_cpus=int(limits.cpus * 1e9),
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            pids_limit=limits.pids,
            extra_hosts={"host.docker.internal": "host-gateway"},
            network=ensure_internal_network(self._client)
            if self.network == "internal"
            else self.network,  # by id: a duplicate name can never make it ambiguous
            detach=True,
        )
        source = self.task.get("workspace_source")
        if source:
            self._copy_workspace(source, workspace)
        self._start_clock()  # before the container's own clock, so ours runs out first
        self.container.start()
        self.workspace = workspace
        # Images without `workspace_source` carry their workspace; make sure it exists.
        self.container.exec_run(["mkdir", "-p", workspace], user="root")
        if source and user.split(":")[0] not in ("root", "0"):
            self.container.exec_run(["chown", "-R", user, workspace], user="root")
        has_timeout = self.container.exec_run(["timeout", "--version"]).exit_code == 0
        if has_timeout:
            self._timeout_prefix = ["timeout", "-k", "5"]
        else:
            log.warning(
                "run %s: image %s has no coreutils `timeout`; an exec that outlives its timeout ends the whole run",
                self.run_id,
                image,
            )

    def _copy_workspace(self, source: str, workspace: str) -> None:
        if not os.path.isdir(source):
            raise RecordError(
                f"{source} is not a directory",
                source=self.task.get("source", "task record"),
                record_id=self.instance_id,
                field="workspace_source",
            )

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            # Host uids mean nothing in the image; root-owned files keep git from refusing them.
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(source, arcname=workspace.lstrip("/"), filter=as_root)
            archive.seek(0)
            self.container.put_archive("/", archive)

    def _exec(self, argv, *, timeout, cwd, env) -> ExecResult:
        api = self._exec_client.api
        started = time.monotonic()
        # `timeout 0` would mean no timeout at all.
        prefix = self._timeout_prefix + [f"{max(timeout, 0.01):.3f}"] if self._timeout_prefix else []
        try:
            exec_id = api.exec_create(self.container.id, prefix + argv, workdir=cwd, environment=env or None)["Id"]
        except APIError as error:
            raise self._api_error("exec", error) from error
        stdout, stderr = CappedBuffer(self.limits.output_bytes), CappedBuffer(self.limits.output_bytes)
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                for out, err in api.exec_start(exec_id, stream=True, demux=True):
                    stdout.write(out or b"")
                    stderr.write(err or b"")
            except Exception as error:  # handed to the caller's thread below
                failure.append(error)

        reader = threading.Thread(target=pump, name=f"exec-{self.run_id[:8]}", daemon=True)
        reader.start()
        reader.join(timeout + EXEC_GRACE_SECONDS)
        if reader.is_alive():
            log.error(
                "run %s: exec %s did not return %ss past its timeout; killing the container",
                self.run_id,
                argv[:3],
                EXEC_GRACE_SECONDS,
            )
            self._kill()
            reader.join(30)
        if failure and not self.timed_out:
            raise SandboxError(f"run {self.run_id}: exec {argv[:3]} failed: {failure[0]}")
        seconds = time.monotonic() - started
        try:
            returncode = api.exec_inspect(exec_id)["ExitCode"]
        except APIError:
            returncode = None
        if returncode is None:  # the container went away under the command
            returncode = 137
        timed_out = seconds >= timeout - 0.05 and returncode != 0
        return ExecResult(returncode, stdout.text(), stderr.text(), timed_out, seconds)

    def _read_file(self, path: str) -> bytes:
        try:
            stream, _ = self.container.get_archive(path)
        except NotFound:
            raise FileNotFoundError(f"{path} (run {self.run_id}, container)") from None
        except APIError as error:
            raise self._api_error("read", error) from error
        with tempfile.TemporaryFile() as archive:
            for chunk in stream:
                archive.write(chunk)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    raise IsADirectoryError(f"{path} is not a regular file (run {self.run_id})")
                return tar.extractfile(member).read()

    def _write_file(self, path: str, contents: bytes) -> None:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo(str(PurePosixPath(path)).lstrip("/"))
            info.size, info.mode, info.mtime = len(contents), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(contents))
        try:
            self.container.put_archive("/", data.getvalue())  # parents are created as needed
        except APIError as error:
            raise self._api_error("write", error) from error

    def _kill(self) -> None:
        try:
            self.container.kill()
        except APIError:
            pass  # not running any more: what we wanted

    def _api_error(self, what: str, error: APIError) -> SandboxError:
        if self.timed_out or "is not running" in str(error):
            return SandboxTimeout(
                f"run {self.run_id} ({self.instance_id}): the container is not "
                f"running ({what}): its wall-clock limit of "
                f"{self.limits.run_timeout:g}s ran out, or a hung exec killed it"
            )
        return SandboxError(f"run {self.run_id} ({self.instance_id}): {what} failed: {error}")

    def cleanup(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True, v=True)
            except NotFound:
                pass
            except APIError as error:
                raise SandboxError(
                    f"run {self.run_id}: container {self.container.name} could "
                    f"not be removed: {error}; remove_orphans() retries"
                ) from error
            self.container = None
        for client in (self._client, self._exec_client):
            if client is not None:
                client.close()
        self._client = self._exec_client = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)


def ensure_internal_network(client: docker.DockerClient) -> str:
    """The id of the shared internal network of all sandboxes (created once, never removed by us).

    Docker allows two networks of one name, and `check_duplicate` does not stop two creators
    racing, so: one creator at a time on this host (a file lock), and duplicates that trajhub
    made, by another host or before this fix, are healed by keeping the oldest, which every
    process picks alike. Sandboxes attach by id, so a duplicate never makes the name ambiguous.
    """
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "docker-network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _internal_networks(client):
            try:
                create_internal_network(client)
            except APIError as error:
                if not _internal_networks(client):  # lost a race with another host: fine
                    raise SandboxError(
                        f"cannot create Docker network {INTERNAL_NETWORK} ({reason(error)}): "
                        "remove unused networks there (docker network prune)"
                    ) from error
    keep, *duplicates = _internal_networks(client)
    for network in duplicates:
        if network.attrs.get("Labels", {}).get(LABEL_CREATED_BY) != CREATED_BY:
            continue  # not ours to remove
        try:
            network.remove()
            log.warning(
                "removed duplicate Docker network %s (%s); kept %s", INTERNAL_NETWORK, network.id[:12], keep.id[:12]
            )
        except APIError as error:  # in use, or already gone: the next batch tries again
            log.warning(
                "duplicate Docker network %s (%s) not removed yet: %s", INTERNAL_NETWORK, network.id[:12], error
            )
    if not keep.attrs.get("Internal") or keep.attrs.get("Options", {}).get(ICC_OPTION) != "false":
        raise SandboxError(
            f"Docker network {INTERNAL_NETWORK} ({keep.id[:12]}) exists but does not isolate "
            f"(Internal={keep.attrs.get('Internal')}, {ICC_OPTION}="
            f"{keep.attrs.get('Options', {}).get(ICC_OPTION)}); remove it "
            f"(docker network rm {keep.id[:12]}) and trajhub makes it anew"
        )
    return keep.id


def create_internal_network(client: docker.DockerClient, *, check_duplicate: bool = True):
    """No route out (internal) and no traffic between sandboxes (icc off). Without
    `check_duplicate` the engine makes a second one of the name, as two hosts racing do."""
    return client.networks.create(
        INTERNAL_NETWORK,
        driver="bridge",
        internal=True,
        check_duplicate=check_duplicate,
        labels={LABEL_CREATED_BY: CREATED_BY},
        options={ICC_OPTION: "false"},
    )


def _internal_networks(client: docker.DockerClient) -> list:
    """Networks named INTERNAL_NETWORK, oldest first (ties by id): the same order for everyone."""
    found = [n for n in client.networks.list(names=[INTERNAL_NETWORK]) if n.name == INTERNAL_NETWORK]
    return sorted(found, key=lambda n: (n.attrs.get("Created", ""), n.id))


def remove_orphans(
    client: docker.DockerClient | None = None, *, mine: bool = False, docker_host: str | None = None
) -> list[str]:
    """Remove sandbox containers nobody will clean up; return their names.

    An orphan was made by a process of this host that no longer exists, or has outlived
    its wall-clock limit (whoever made it). Containers of live runs are left alone, except,
    with `mine`, this process's own (a cancelled step stops the sandboxes it started).
    """
    own_client = client is None
    client = client or connect(docker_host)
    try:
        removed = []
        host, now = socket.gethostname(), time.time()
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_CREATED_BY}={CREATED_BY}"}):
            labels = container.labels
            expired = now > float(labels.get(LABEL_EXPIRES_AT, 0))
            creator_gone = labels.get(LABEL_HOST) == host and not _pid_alive(labels.get(LABEL_PID))
            own = mine and labels.get(LABEL_HOST) == host and labels.get(LABEL_PID) == str(os.getpid())
            if not (expired or creator_gone or own):
                continue
            try:
                container.remove(force=True, v=True)
            except NotFound:
                continue  # its owner got there first
            log.info(
                "removed orphan sandbox %s (run %s, pid %s)",
                container.name,
                labels.get(LABEL_RUN_ID),
                labels.get(LABEL_PID),
            )
            removed.append(container.name)
        return removed
    finally:
        if own_client:
            client.close()


def _pid_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def bridge_gateway(docker_host: str | None = None) -> str:
    """The host's address on Docker's default bridge: where `host.docker.internal`
    (host-gateway) points, and so where a service for the sandboxes must listen."""
    client = connect(docker_host)
    try:
        bridge = client.networks.get("bridge").attrs
    except APIError as error:
        raise SandboxError(f"cannot inspect Docker's default network `bridge`: {error}") from error
    finally:
        client.close()
    return gateway_of(bridge, local_engine=not docker_host or docker_host.startswith("unix://"))


def gateway_of(bridge: dict, *, local_engine: bool) -> str:
    """The gateway of a `docker network inspect bridge` result: IPAM's Gateway when given.
    It is optional in Docker's API, and absent when the engine adopts an existing bridge,
    so then the address of the bridge's own interface (docker0, which is what the engine
    gives `host-gateway`), readable only when the engine runs on this host."""
    configs = (bridge.get("IPAM") or {}).get("Config") or []
    for config in configs:
        if config.get("Gateway") and ":" not in config["Gateway"]:
            return config["Gateway"].split("/")[0]
    interface = (bridge.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    looked_at = f"IPAM.Config {configs} has no IPv4 Gateway"
    if local_engine:
        address = interface_address(interface)
        if address:
            return address
        looked_at += f"; interface {interface} has no IPv4 address on this host"
    else:
        looked_at += f"; the engine is remote, so its interface {interface} cannot be read here"
    raise SandboxError(
        f"cannot tell the host's address on Docker's bridge network ({looked_at}); "
        "sandboxes could not reach the proxy. Set proxy.url to an address they reach"
    )


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface `name` on this host, or None."""
    SIOCGIFADDR = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])
