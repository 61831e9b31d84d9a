"""Images for the demo tasks, built without a registry (or from the Dockerfile where one is reachable).

The registry-free route: `debootstrap --variant=minbase` makes a Debian root file system
from Debian's package mirror (about a minute), cached as a tarball, then imported with
`docker import`. Users' own tasks name images they pull as usual.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from docker.errors import APIError, BuildError, DockerException, ImageNotFound
from requests import RequestException

from trajhub_assets.sandbox.base import SandboxError, cache_dir
from trajhub_assets.sandbox.docker import (
    bridge_gateway,
    connect,
    engine_url,
    ensure_internal_network,
    reason,
    remove_orphans,
)

log = logging.getLogger(__name__)

DEMO_IMAGE = "trajhub-demo:py311"
DOCKERFILE = Path(__file__).with_name("Dockerfile")
SUITE = "bookworm"  # Python 3.11
PACKAGES = ("python3", "python-is-python3", "python3-pytest", "git")
# `docker import` makes an image with an empty config; give it what a container expects.
IMPORT_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
]


def ensure_demo_image(client=None, *, tag: str = DEMO_IMAGE) -> str:
    """Make `tag` exist on the engine: nothing to do when it does, else debootstrap + import."""
    client = client or connect()
    if _image_exists(client, tag):
        return tag
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rootfs_tar = cache / f"rootfs-{SUITE}-minbase-{'-'.join(PACKAGES)}.tar"
    with open(cache / "images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others find its result
        if _image_exists(client, tag):
            return tag
        if not rootfs_tar.exists():
            _debootstrap_tarball(rootfs_tar)
        log.info("importing %s as %s", rootfs_tar, tag)
        repository, _, version = tag.rpartition(":")
        try:
            client.api.import_image_from_file(
                str(rootfs_tar), repository=repository, tag=version, changes=IMPORT_CHANGES
            )
        except APIError as error:
            raise SandboxError(f"docker import of {rootfs_tar} as {tag} failed: {error}") from error
    if not _image_exists(client, tag):
        raise SandboxError(f"docker import of {rootfs_tar} reported success but {tag} is missing")
    return tag


def _debootstrap_tarball(target: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "debootstrap is not installed: run scripts/docker_setup.sh as root (or apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise SandboxError("building the demo image with debootstrap needs root")
    mirror = os.environ.get("TRAJHUB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix="rootfs-"))
    try:
        rootfs = work / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
        log.info("building the demo root file system (about a minute): %s", " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired as error:
            raise SandboxError(f"debootstrap did not finish in 30 minutes: {command}") from error
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            log.error("debootstrap failed (%d):\n%s", done.returncode, output[-5000:])
            raise SandboxError(f"debootstrap failed ({done.returncode}): {_last_line(output)}")
        partial = work / "rootfs.tar"
        # GNU tar keeps what the root file system holds (owners, devices, capabilities).
        packed = subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
            capture_output=True,
            text=True,
        )
        if packed.returncode != 0:
            raise SandboxError(f"tar of {rootfs} failed: {_last_line(packed.stderr)}")
        partial.rename(target)  # readers never see half a tarball
    finally:
        _remove_build_dir(work)


def _last_line(output: str) -> str:
    """A tool's last line of output, where it says why it stopped (the whole goes to the log)."""
    return (output.strip().splitlines() or ["no output"])[-1]


def _remove_build_dir(work: Path) -> None:
    # A debootstrap that died may leave /proc or /dev mounted inside: deleting through such
    # a mount would delete the host's files, so unmount first and keep the directory if that fails.
    def mounts() -> list[str]:
        points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        return sorted((p for p in points if p.startswith(f"{work}/")), key=len, reverse=True)

    for point in mounts():
        subprocess.run(["umount", "-l", point], capture_output=True)
    if left := mounts():
        log.error("not removing %s: still mounted inside: %s", work, ", ".join(left))
        return
    shutil.rmtree(work, ignore_errors=True)


def build_dockerfile_image(client=None, *, tag: str = DEMO_IMAGE) -> str:
    """Build the demo image from trajhub_assets/sandbox/Dockerfile (needs a reachable registry)."""
    client = client or connect()
    try:
        with DOCKERFILE.open("rb") as dockerfile:
            client.images.build(fileobj=dockerfile, tag=tag, rm=True)
    except (BuildError, APIError) as error:
        raise SandboxError(f"building {tag} from {DOCKERFILE} failed: {error}") from error
    return tag


def _image_exists(client, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def prepare_engine(docker_host: str | None, images: set[str], network: str = "internal") -> str:
    """Ready an engine for a batch of runs: clear sandboxes orphaned by crashed runs, build the
    demo image if a task needs it, and create the internal network before any run needs it.
    Returns this host's address on the engine's bridge, where containers reach a service of
    this host (host.docker.internal).
    Every failure is one SandboxError line naming the engine, so the batch fails once, readably,
    before any run starts."""
    url = engine_url(docker_host)
    client = connect(docker_host)  # its error names the engine and what to do already
    try:
        remove_orphans(client)
        if DEMO_IMAGE in images:
            ensure_demo_image(client)
        for image in sorted(images - {DEMO_IMAGE}):
            if not _image_exists(client, image):
                raise SandboxError(
                    f"image {image!r} is missing: pull it there (docker pull {image}), or fix the task's image"
                )
        if network == "internal":
            ensure_internal_network(client)
        return bridge_gateway(docker_host)
    except SandboxError as error:
        raise SandboxError(f"Docker engine at {url}: {error}") from error
    except (DockerException, RequestException) as error:  # a call the engine refused or dropped
        raise SandboxError(
            f"Docker engine at {url}: preparing it for the sandboxes failed "
            f"({reason(error)}); `docker info` there shows its state"
        ) from error
    finally:
        client.close()
