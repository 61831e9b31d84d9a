"""Running a replay: the recorded responses behind the real proxy, the run again, the report.

The replay goes through the same recording proxy as any run, with a scripted upstream
(ReplayPolicy) in place of the model. The proxy it starts has one route per model name
the recorded run asked for, each pointed at that upstream with the settings of the
config's `scripted-*` routes (proxy/litellm_config.yaml): the agent asks for the very
model it asked for when recorded, so nothing that depends on the model name (Claude
Code's system prompt names it) differs, and no call can reach a real provider.

The replayed run has a run id of its own, `replay.<model key>~<instance>~<attempt>~<nonce>`,
and its recordings go to `<root>/replays/recordings/`, which raw_trajectories never reads.
Its report is a row of the `replays` table.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from trajhub_assets.config import SandboxConfig
from trajhub_assets.recording.attempts import Proxy, run_attempt
from trajhub_assets.recording.proxy_process import (
    DEFAULT_CONFIG,
    ProxyProcess,
    scripted_upstream_env,
)
from trajhub_assets.recording.raw_calls import read_run
from trajhub_assets.recording.run_id import make_run_id, parse_run_id, rows_by_partition
from trajhub_assets.recording.scripted_upstream import Policy, ScriptedUpstream
from trajhub_assets.replay.compare import ReplayReport, compare_run
from trajhub_assets.replay.recorded import (
    RecordedRun,
    ReplayError,
    ReplayPolicy,
    check_replayable,
)
from trajhub_assets.replay.schema import REPLAYS
from trajhub_assets.store import Store

log = logging.getLogger(__name__)

REPLAY_PREFIX = "replay."  # on the model key of a replay's run id
# The config's routes to the scripted upstream, by the wire format they speak.
TEMPLATE_ROUTES = {"anthropic_messages": "scripted-anthropic", "openai_chat": "scripted-openai"}


def replay_run_id(run_id: str) -> str:
    run = parse_run_id(run_id)
    return make_run_id(f"{REPLAY_PREFIX}{run.model_key}", run.instance, run.attempt)


def replay_proxy_config(runs: list[RecordedRun], base: Path = DEFAULT_CONFIG) -> dict:
    """The proxy config of a replay: `base`'s settings, and a route for each model name the
    runs asked for, to the scripted upstream in the wire format the run spoke."""
    config = yaml.safe_load(Path(base).read_text())
    templates = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    wire_formats: dict[str, str] = {}
    for run in runs:
        check_replayable(run)
        for record in run.records:
            name = record["request"].get("model") or record.get("model")
            if not name:  # a request the proxy could not parse: it asked for no model
                continue
            if wire_formats.setdefault(name, record["wire_format"]) != record["wire_format"]:
                raise ReplayError(
                    f"run {run.run_id}: model {name!r} was called in both "
                    f"{wire_formats[name]} and {record['wire_format']}; a replay route "
                    "speaks one"
                )
    routes = []
    for name, wire_format in sorted(wire_formats.items()):
        params = dict(templates[TEMPLATE_ROUTES[wire_format]])
        params["model"] = f"{params['model'].split('/', 1)[0]}/{name}"  # the provider, then the name
        routes.append({"model_name": name, "litellm_params": params})
    return config | {"model_list": routes}


def run_replay(
    recorded: RecordedRun,
    proxy: Proxy,
    recordings_dir: str | Path,
    sandbox: SandboxConfig,
    serve: Callable[[Policy], None],
) -> ReplayReport:
    """Replay one run: `serve` installs its ReplayPolicy on the upstream behind `proxy`, whose
    recordings land in `recordings_dir`. The sandbox backend is the recorded run's."""
    serve(ReplayPolicy(recorded))
    replay_id = replay_run_id(recorded.run_id)
    sandbox = sandbox.model_copy(update={"backend": recorded.row["backend"] or sandbox.backend})
    log.info("replaying %s as %s (%s, %s)", recorded.run_id, replay_id, recorded.model.scaffold, sandbox.backend)
    row = run_attempt(recorded.task, recorded.model, recorded.row["attempt"], proxy, sandbox, run_id=replay_id)
    path = Path(recordings_dir) / f"{replay_id}.jsonl"
    replayed = read_run(path) if path.exists() else None
    if replayed is not None and replayed.bad_lines:
        raise ReplayError(
            f"the replay's recordings have {len(replayed.bad_lines)} bad line(s); the first: {replayed.bad_lines[0]}"
        )
    return compare_run(recorded, replayed.records if replayed else [], row)


class ReplayService:
    """A scripted upstream and a proxy with replay routes for `runs`; replays them one at a time.

    with ReplayService(runs, store.root, config.sandbox) as service:
        reports = [service.replay(run) for run in runs]
    """

    def __init__(self, runs: list[RecordedRun], root: str | Path, sandbox: SandboxConfig, purpose: str = "replays"):
        self.runs, self.sandbox = runs, sandbox
        self.recordings_dir = Path(root) / purpose / "recordings"  # never what raw_trajectories reads
        self._config = replay_proxy_config(runs)
        self._docker = any((run.row["backend"] or sandbox.backend) == "docker" for run in runs)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.upstream: ScriptedUpstream | None = None
        self.process: ProxyProcess | None = None
        self.proxy: Proxy | None = None

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        host = "127.0.0.1"
        if self._docker:
            from trajhub_assets.sandbox.images import prepare_engine

            host = prepare_engine(
                self.sandbox.docker_host, {run.task.get("image") for run in self.runs}, self.sandbox.network
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="trajhub-replay-")
        config = Path(self._tmp.name) / "litellm_replay.yaml"
        config.write_text(yaml.safe_dump(self._config, sort_keys=False))
        self.upstream = ScriptedUpstream().start()
        env = scripted_upstream_env(self.upstream.url, f"scripted-{secrets.token_hex(8)}")
        self.process = ProxyProcess(self.recordings_dir, config=config, env=env, host=host).start()
        from_sandbox = f"http://host.docker.internal:{self.process.port}" if self._docker else self.process.url
        self.proxy = Proxy(self.process.url, from_sandbox, self.process.master_key)

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.stop()
        if self.upstream is not None:
            self.upstream.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def replay(self, recorded: RecordedRun) -> ReplayReport:
        return run_replay(recorded, self.proxy, self.recordings_dir, self.sandbox, self.upstream.set_script)


# -- the replays table --------------------------------------------------------------------
def report_row(report: ReplayReport, release_version: str | None = None) -> dict:
    first = report.first_divergence
    return {
        "replay_run_id": report.replay_run_id,
        "run_id": report.run_id,
        "attempt": report.attempt,
        "scaffold": report.scaffold,
        "backend": report.backend,
        "recorded_scaffold_version": report.recorded_scaffold_version,
        "replay_scaffold_version": report.replay_scaffold_version,
        "replayed_at": time.time(),
        "release_version": release_version,
        "recorded_calls": report.recorded_calls,
        "replayed_calls": report.replayed_calls,
        "matched_calls": report.matched_calls,
        "raw_matched_calls": report.raw_matched_calls,
        "extra_calls": report.extra_calls,
        "side_call_differences": report.side_call_differences,
        "fidelity": report.fidelity,
        "divergence_call_index": first.call_index if first else None,
        "divergence_seq": first.seq if first else None,
        "divergence_path": first.path if first else None,
        "divergence_expected": first.expected if first else None,
        "divergence_actual": first.actual if first else None,
        "outcome_differences": [vars(d) for d in report.outcome_differences],
        "reproduced": report.reproduced,
        "error": report.error,
    }


def store_reports(store: Store, rows: list[dict]) -> None:
    """Add replay rows to their runs' (model, instance) partitions, keeping earlier replays."""
    for (model, instance), new in rows_by_partition(rows).items():
        partition = {"model": model, "instance": instance}
        kept = store.read(REPLAYS, partition).to_pylist() if store.exists(REPLAYS, partition) else []
        replaced = {row["replay_run_id"] for row in new}
        merged = [row for row in kept if row["replay_run_id"] not in replaced] + new
        store.write(REPLAYS, pa.Table.from_pylist(merged, schema=REPLAYS.schema), partition)


# -- sampling a release -------------------------------------------------------------------
def release_run_ids(release_dir: str | Path) -> list[str]:
    """The run ids of a release's `trajectories` config."""
    shards = sorted((Path(release_dir) / "data" / "trajectories").glob("*.parquet"))
    if not shards:
        raise ReplayError(f"{release_dir}: no trajectories shards (data/trajectories/*.parquet)")
    return sorted(
        {run_id for shard in shards for run_id in pq.read_table(shard, columns=["run_id"]).column("run_id").to_pylist()}
    )


def sample_runs(run_ids: list[str], n: int) -> list[str]:
    """`n` of the runs, the same ones for the same runs: the first by sha256 of the run id."""
    return sorted(run_ids, key=lambda run_id: hashlib.sha256(run_id.encode()).hexdigest())[:n]


def newest_release(root: str | Path, name: str) -> Path:
    releases = list((Path(root) / "releases" / name).glob("*/manifest.json"))
    if not releases:
        raise ReplayError(f"no release {name!r} under {Path(root) / 'releases'}: materialize hf_dataset_release first")
    return max(releases, key=lambda p: p.stat().st_mtime).parent
