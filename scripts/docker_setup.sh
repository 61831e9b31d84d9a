#!/usr/bin/env bash
# Make a Docker engine answer on this machine (CI runs this as root on a fresh Debian).
# Idempotent: installs docker.io and debootstrap only when missing, starts dockerd only
# when no engine answers. Exits non-zero, loudly, when no engine can be had.
set -euo pipefail

LOG=${TRAJHUB_DOCKERD_LOG:-/var/log/trajhub-dockerd.log}
WAIT_SECONDS=${TRAJHUB_DOCKERD_WAIT:-60}

fail() {
    echo "==================================================================" >&2
    echo "docker_setup.sh: DOCKER CANNOT RUN HERE: $*" >&2
    echo "==================================================================" >&2
    exit 1
}

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_answers; then
    echo "docker_setup.sh: engine already answers"
else
    missing=()
    [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || fail "need root to install ${missing[*]}"
        echo "docker_setup.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || fail "apt-get update failed"
        apt-get install -y -qq "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]} failed"
    fi
    if ! engine_answers; then
        [ "$(id -u)" = 0 ] || fail "need root to start dockerd"
        echo "docker_setup.sh: starting /usr/sbin/dockerd (log: $LOG)"
        # Its own session: the engine outlives this script and the job that ran it.
        setsid nohup /usr/sbin/dockerd >>"$LOG" 2>&1 </dev/null &
        for _ in $(seq "$WAIT_SECONDS"); do
            engine_answers && break
            sleep 1
        done
        engine_answers || { tail -n 30 "$LOG" >&2 || true; fail "dockerd did not answer within ${WAIT_SECONDS}s (see $LOG)"; }
    fi
fi

# debootstrap is needed to build the demo image even when the engine was already up.
if ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "need root to install debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null || fail "apt-get install debootstrap failed"
fi
docker info --format 'docker_setup.sh: engine {{.ServerVersion}} up, storage driver {{.Driver}}, cgroup {{.CgroupVersion}}'
