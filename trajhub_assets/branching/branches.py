"""A branch of a recorded run: the steps before k served again, step k on from the live model.

A branch at step k of a run (the k-th step of its main agent, 0-based, as rule_rewards
counts them: rules.build_run's main_steps) re-runs the run's scaffold on its task in a fresh
sandbox, through the proxy. The upstream serves the recorded responses (the replay's lanes,
replay.recorded) until the agent asks for the call that produced step k. Every agent call up
to and including that one must ask what its recorded call asked: the prompt (system,
messages, tools) after masking, sampling parameters aside, so the sandbox holds the state
the recorded model saw when the live model takes over. A call that asks anything else is
answered with HTTP 400 (clients do not retry it, the agent stops) and the branch is refused,
naming the call and where its prompt differs. From the call of step k on, every request
(side calls too) goes to the live policy: a baseline's policy, or for a provider's model the
project's recording proxy, which calls the model at its own api_base with its own key as in a
normal run (ProviderPolicy). A continuation whose live model answered its last call with an
error is a row with that error, naming the model and its endpoint.

Each continuation is a run of its own, with a run id in the parent's (model, instance)
partition, stored in the branch tables (schema.py: the recording tables' schemas, never
`runs` itself); its row says `kind = "branch"`, the parent run, the step and the sample. Its
sampling seed is derived from (parent, step, sample): the same branch asks the same way, and a
seeded policy (the `explorer` baseline) continues the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from trajhub_assets.branching.schema import BRANCH_MESSAGE_BLOBS, BRANCH_RAW_CALLS, BRANCH_RUNS
from trajhub_assets.config import ModelConfig
from trajhub_assets.errors import TrajhubError
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, table_to_conversations
from trajhub_assets.recording.attempts import Proxy, run_attempt
from trajhub_assets.recording.raw_calls import build_tables, read_run
from trajhub_assets.recording.run_id import RUN_HEADER, make_run_id, parse_run_id, rows_by_partition
from trajhub_assets.recording.scripted_upstream import Fail, Policy, Reply, ScriptedRequest
from trajhub_assets.replay.compare import first_difference
from trajhub_assets.replay.masks import mask_value
from trajhub_assets.replay.recorded import (
    CallMatcher,
    RecordedRun,
    check_replayable,
    family,
    load_recorded_run,
    reply_for,
)
from trajhub_assets.replay.service import ReplayService
from trajhub_assets.rewards.rules import build_run
from trajhub_assets.scaffolds.baselines import ROUTES, BaselinePolicies, upstream_policy
from trajhub_assets.store import Store

if TYPE_CHECKING:
    from trajhub_assets.recording.resources import ProxyResource

BRANCH_KIND = "branch"  # the runs row's kind of a continuation
PROMPT_KEYS = ("system", "messages", "tools")  # what a prefix call must ask again; sampling aside
REFUSED = "trajhub branch: the prefix does not reproduce"
REFUSED_ROW = "branch refused"  # how a refused continuation's runs row error starts
# Where the project's proxy serves each kind of request, and the client headers it needs from it.
PROXY_PATHS = {
    "anthropic_messages": "/v1/messages",
    "openai_chat": "/v1/chat/completions",
    "count_tokens": "/v1/messages/count_tokens",
}
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", RUN_HEADER)
LIVE_TIMEOUT_S = 600  # the proxy's own request_timeout (proxy/litellm_config.yaml)


class BranchError(TrajhubError):
    """A branch cannot be made as asked (no such step, a run that cannot be replayed)."""


@dataclass(frozen=True)
class Divergence:
    """Where the prefix went its own way: the recorded call (its seq) and the prompt's first difference."""

    seq: int | None
    path: str
    expected: str
    actual: str

    def text(self) -> str:
        where = f"recorded call seq {self.seq}" if self.seq is not None else "a call the recording has not"
        return f"{where}, at {self.path or 'the request'}: expected {self.expected!r}, got {self.actual!r}"


def branch_call(recorded: RecordedRun, conversations: list[dict], step: int) -> int:
    """The index in `recorded.records` of the call that produced main step `step` of the run,
    given the run's merged conversations."""
    steps = build_run(conversations).main_steps
    if not 0 <= step < len(steps):
        raise BranchError(f"run {recorded.run_id} has {len(steps)} main steps (0..{len(steps) - 1}); no step {step}")
    call_id = steps[step].message.get("generated_by")
    index = next((i for i, r in enumerate(recorded.records) if r["call_id"] == call_id), None)
    if index is None:
        raise BranchError(f"run {recorded.run_id}: step {step} was generated by call {call_id!r}, not in its records")
    return index


def _prompt(request: dict) -> dict:
    return mask_value({key: request[key] for key in PROMPT_KEYS if key in request})


class BranchPolicy:
    """A scripted-upstream policy: `recorded`'s responses until the call `at` (an index in its
    records) is asked for, verifying each agent call's prompt on the way; then `live`."""

    def __init__(self, recorded: RecordedRun, at: int, live: Policy, run_id: str | None = None):
        check_replayable(recorded)
        self.records, self.at, self.live, self.run_id = recorded.records, at, live, run_id
        self.matcher = CallMatcher(self.records)
        self.branched = False  # the call of the branch step was asked for: live from here on
        self.divergence: Divergence | None = None
        self.live_failure: str | None = None  # the live model's last answer, when it was an error
        self._lock = threading.Lock()

    def __call__(self, request: ScriptedRequest) -> Reply | Fail:
        with self._lock:
            served = None if self.branched else self._prefix(request)
        if served is not None:
            return served
        # live answers outside the lock: they may be slow, and clients ask concurrently
        if self.run_id:  # the continuation's run id, which the agent sent the replay proxy
            request = dataclasses.replace(request, headers={**request.headers, RUN_HEADER: self.run_id})
        answer = self.live(request)
        self.live_failure = answer.message if isinstance(answer, Fail) else None
        return answer

    def _prefix(self, request: ScriptedRequest) -> Reply | Fail | None:
        """The recorded answer to a request of the prefix, or a refusal; None: this is the
        branch step's call, and the live model answers from here on."""
        if self.divergence is not None:
            return Fail(400, f"{REFUSED}: {self.divergence.text()}")
        index = self.matcher.match(family(request.wire_format), request.body)
        if index is None:
            self.divergence = Divergence(None, "", "(no further recorded call)", str(request.body)[:200])
            return Fail(400, f"{REFUSED}: {self.divergence.text()}")
        record = self.records[index]
        if record["call_kind"] == "agent" or index == self.at:
            found = first_difference(_prompt(record["request"]), _prompt(request.body))
            if found is not None:
                self.divergence = Divergence(record["seq"], *found)
                return Fail(400, f"{REFUSED}: {self.divergence.text()}")
        if index != self.at:
            return reply_for(record)
        self.branched = True
        return None


def is_refused(row: dict) -> bool:
    """Whether a continuation's runs row is a refused branch (its prefix did not reproduce)."""
    return str(row["error"] or "").startswith(REFUSED_ROW)


def branch_seed(parent_run_id: str, step: int, sample: int) -> int:
    """The sampling seed of one continuation: fixed by (parent, step, sample). The parent is
    taken without its run id's nonce (model~instance~attempt): the seeds do not change with the
    recording's random suffix, so a seeded model branches the same way every time (the demo)."""
    stable = parent_run_id.rsplit("~", 1)[0] if parent_run_id.count("~") == 3 else parent_run_id
    digest = hashlib.sha256(f"{stable}:{step}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def run_branch(
    recorded: RecordedRun, step: int, at: int, sample: int, proxy: Proxy, sandbox, serve, live: Policy
) -> tuple[dict, BranchPolicy]:
    """One continuation of `recorded` from main step `step` (its call index `at`): `serve`
    installs the BranchPolicy on the upstream behind `proxy`. Returns the continuation's `runs`
    row (an error naming the divergence when the prefix did not reproduce) and the policy."""
    model = recorded.model
    seed = branch_seed(recorded.run_id, step, sample)
    model = model.model_copy(
        update={"sampling": model.sampling.model_copy(update={"extra": {**model.sampling.extra, "seed": seed}})}
    )
    run_id = make_run_id(model.key, recorded.task["instance_id"], recorded.row["attempt"])
    policy = BranchPolicy(recorded, at, live, run_id)
    serve(policy)
    sandbox = sandbox.model_copy(update={"backend": recorded.row["backend"] or sandbox.backend})
    row = run_attempt(recorded.task, model, recorded.row["attempt"], proxy, sandbox, run_id=run_id)
    row |= {"kind": BRANCH_KIND, "parent_run_id": recorded.run_id, "branch_step": step, "branch_sample": sample}
    if policy.divergence is not None:
        row["error"] = f"{REFUSED_ROW}: {REFUSED.removeprefix('trajhub branch: ')} at {policy.divergence.text()}"
    elif not policy.branched:
        seq = recorded.records[at]["seq"]
        row["error"] = f"{REFUSED_ROW}: the agent stopped before it asked for step {step} (recorded call seq {seq})"
    elif policy.live_failure is not None:  # the agent got no answer from the live model at last
        row["error"] = f"the live model failed: {policy.live_failure}"
    return row, policy


# -- recording branches into the store ------------------------------------------------------
def live_policy(model: ModelConfig, tasks: list[dict], proxy: ProxyResource | None = None) -> Policy:
    """What continues a branch: the run's own model. A baseline is served here by its policy; a
    provider's model through `proxy`, the project's recording proxy (a ProxyResource, started on
    first use), as a normal run's calls are."""
    if model.route.startswith(ROUTES):
        return upstream_policy(BaselinePolicies(tasks))
    if proxy is None:
        raise BranchError(f"model {model.name!r} (route {model.route}): continued live through a proxy, none given")
    return ProviderPolicy(model, Proxy(proxy.base_url, proxy.base_url, proxy.key))


class ProviderPolicy:
    """The live policy of a provider's model: each request, as the agent asked it but for the
    model's route and not streamed, to the project's proxy, whose route for the model
    (recording.routes) calls it at its api_base with its key; the answer's body is served back
    as it came (the scripted upstream streams it when the agent asked for a stream). That proxy
    records the calls too, under the continuation's run id (raw_trajectories reads only the
    files of the runs it started)."""

    def __init__(self, model: ModelConfig, proxy: Proxy):
        self.model, self.proxy = model, proxy
        endpoint = model.api_base or f"{model.route.split('/', 1)[0]}'s default endpoint"
        self.where = f"model {model.name!r} (route {model.route}) at {endpoint}"

    def __call__(self, request: ScriptedRequest) -> Reply | Fail:
        body = request.body | {"model": self.model.route}
        if body.get("stream"):
            body["stream"] = False
            body.pop("stream_options", None)  # allowed only on a stream
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        url = f"{self.proxy.url_from_host}{PROXY_PATHS[request.wire_format]}"
        try:
            response = httpx.post(
                url, json=body, headers=headers | {"authorization": f"Bearer {self.proxy.key}"}, timeout=LIVE_TIMEOUT_S
            )
        except httpx.HTTPError as error:
            return Fail(502, f"{self.where}: the project's proxy {self.proxy.url_from_host} did not answer: {error!r}")
        if response.status_code != 200:
            return Fail(response.status_code, f"{self.where}: HTTP {response.status_code}: {_error_text(response)}")
        try:
            return Reply([], body=response.json())
        except ValueError:
            return Fail(502, f"{self.where}: the answer is not JSON: {response.text[:200]!r}")


def _error_text(response: httpx.Response) -> str:
    """The error's message as the proxy relayed it (OpenAI and Anthropic shapes), else the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or response.text)[:1000]


def store_branches(store: Store, rows: list[dict], recordings_dir: Path) -> None:
    """Add the continuations (their `runs` rows and recordings) to their partitions' branch
    tables, keeping the branches stored before."""
    for (model, instance), new in rows_by_partition(rows).items():
        partition = {"model": model, "instance": instance}
        paths = [recordings_dir / f"{row['run_id']}.jsonl" for row in new]
        records = [record for path in paths if path.exists() for record in read_run(path).records]
        calls, blobs = build_tables(records, model, instance)
        runs = pa.Table.from_pylist(new, schema=BRANCH_RUNS.schema)
        if store.exists(BRANCH_RUNS, partition):
            runs = pa.concat_tables([store.read(BRANCH_RUNS, partition), runs])
            calls = pa.concat_tables([store.read(BRANCH_RAW_CALLS, partition), calls])
            blobs = pa.concat_tables([store.read(BRANCH_MESSAGE_BLOBS, partition), blobs])
        store.write(BRANCH_RAW_CALLS, calls, partition)
        store.write(BRANCH_MESSAGE_BLOBS, _unique_blobs(blobs), partition)
        store.write(BRANCH_RUNS, runs, partition)


def _unique_blobs(blobs: pa.Table) -> pa.Table:
    """Each blob once (they are content-addressed: two continuations share their prefix's)."""
    seen: set[str] = set()
    keep = [not (key in seen or seen.add(key)) for key in blobs["sha256"].to_pylist()]
    return blobs.filter(pa.array(keep, pa.bool_()))


def record_branches(
    store: Store, config, run_id: str, step: int, samples: int, proxy: ProxyResource | None = None
) -> list[dict]:
    """Branch a stored run at main step `step`, `samples` times, and store the continuations;
    a provider's model continues through `proxy` (live_policy)."""
    recorded = load_recorded_run(store, run_id, config)
    run = parse_run_id(run_id)
    partition = {"model": run.model_key, "instance": run.instance}
    if not store.exists(MERGED_TRAJECTORIES, partition):
        raise BranchError(f"run {run_id}: merged_trajectories {partition} is not materialized: its steps are not known")
    merged = store.read(MERGED_TRAJECTORIES, partition)
    conversations = table_to_conversations(merged.filter(pc.equal(merged["run_id"], run_id)))
    if not conversations:
        raise BranchError(f"run {run_id}: no conversation of it in merged_trajectories {partition}")
    with ReplayService([recorded], store.root, config.sandbox, purpose="branches") as service:
        rows = continue_at(recorded, conversations, step, samples, service, config.sandbox, proxy)
        store_branches(store, rows, service.recordings_dir)
    return rows


def continue_at(
    recorded: RecordedRun,
    conversations: list[dict],
    step: int,
    samples: int,
    service: ReplayService,
    sandbox,
    proxy: ProxyResource | None = None,
) -> list[dict]:
    """`samples` continuations of `recorded` (its merged `conversations`) from main step `step`,
    through a started ReplayService whose runs include it, the live model through `proxy`
    (live_policy); their `runs` rows."""
    at = branch_call(recorded, conversations, step)
    live = live_policy(recorded.model, [recorded.task], proxy)
    return [
        run_branch(recorded, step, at, sample, service.proxy, sandbox, service.upstream.set_script, live)[0]
        for sample in range(samples)
    ]
