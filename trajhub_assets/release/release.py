"""hf_dataset_release: a versioned, reproducible Hugging Face dataset from the store.

Configs (each one split, `train`, in Parquet shards written by `datasets`):
- trajectories: one row per run, its main conversation as `messages` (SFT, TRL's conversational
  language-modeling format), `tools_json`, the indices of the messages the model generated, and
  its reward with the components;
- preferences: PREFERENCE_PAIRS rows of every instance (DPO, TRL's conversational preference format);
  messages in both are pairs.chat_message's (thinking blocks with their signatures, content parts,
  extra, a null content kept), and the card documents each key (CHAT_MESSAGE_DOCS);
- step_rewards: one row per (run, step) of the main conversation;
- tasks: the task records, without local paths.

Layout: <root>/releases/<name>/<version>/{README.md, manifest.json, calibration.md?,
data/<config>/train-0000k-of-0000n.parquet}. Reproducible: rows are sorted, shards cut at fixed
row counts, writer options are those of `datasets` (recorded in the manifest with the library
versions), and nothing in the files depends on the clock; the default version is a hash of the
data, so the same store gives the same directory, byte for byte.

Streamed: the inputs come one (model, instance) group at a time, each config's shards are cut
as its rows arrive and the card's counts are added up on the way, so a release holds about one
shard per config in memory, not every row. Every shard passes the secret scan before it is
written (to a staging directory that becomes the release only when nothing was found), and so
does the card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from trajhub_assets.branching.schema import BRANCH_PAIRS
from trajhub_assets.errors import TrajhubError
from trajhub_assets.pairs.pairs import chat_message, reward_version, tools_json
from trajhub_assets.pairs.schema import CHAT_MESSAGE, CHAT_MESSAGE_DOCS, CHAT_MESSAGES, PREFERENCE_PAIRS
from trajhub_assets.release.calibration import CalibrationReport
from trajhub_assets.release.secrets import Hit, SecretLeakError, SecretScanner, check_no_secrets
from trajhub_assets.tasks.schema import CHECKLIST_TYPE

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 2000
ROW_GROUP_ROWS = 500
SPLIT = "train"
_VERSION = re.compile(r"^[A-Za-z0-9._+-]+$")

TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("instance_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("conversation_id", pa.string()),
        pa.field("messages", CHAT_MESSAGES),
        pa.field("tools_json", pa.string()),
        pa.field("generated_indices", pa.list_(pa.int64())),
        pa.field("n_steps", pa.int64()),
        pa.field("reward", pa.float64()),
        pa.field("outcome", pa.float64()),
        pa.field("mean_step_reward", pa.float64()),
        pa.field("checklist_pass_rate", pa.float64()),
        pa.field("reward_version", pa.string()),
    ]
)
STEP_REWARD_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("instance_id", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("step_index", pa.int64()),
        pa.field("message_index", pa.int64()),
        pa.field("step_reward", pa.float64()),
        pa.field("reward_version", pa.string()),
    ]
)
TASK_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("user_query", pa.list_(pa.string())),
        pa.field("system_prompt", pa.string()),
        pa.field("image", pa.string()),
        pa.field("workspace_abs_path", pa.string()),
        pa.field("scaffold_name", pa.string()),
        pa.field("scaffold_version", pa.string()),
        pa.field("checklist", CHECKLIST_TYPE),
        pa.field("expected_skill", pa.string()),
        pa.field("test_command", pa.string()),
        pa.field("record_sha256", pa.string()),
    ]
)
SCHEMAS = {
    "trajectories": TRAJECTORY_SCHEMA,
    "preferences": PREFERENCE_PAIRS.schema,
    "step_rewards": STEP_REWARD_SCHEMA,
    "tasks": TASK_SCHEMA,
    "branch_steps": BRANCH_PAIRS.schema,
    "branch_continuations": BRANCH_PAIRS.schema,
}
CONFIGS = {
    "trajectories": "one row per run: the main conversation as `messages` (SFT) with its reward",
    "preferences": "DPO pairs: `prompt`, `chosen`, `rejected` message lists with the rewards behind them",
    "step_rewards": "one row per step of a run's main conversation: the step reward",
    "tasks": "the task records the runs were made from",
    "branch_steps": "DPO pairs from branches: two continuations of one recorded run from one step, "
    "`prompt` their shared prefix, `chosen`/`rejected` their first differing assistant turn",
    "branch_continuations": "the same branches' pairs with the whole of each continuation from the branch step",
}
BRANCH_CONFIGS = {"branch_step": "branch_steps", "branch_continuation": "branch_continuations"}  # kind -> config
# Released only when they hold rows: most projects branch nothing, and `datasets` cannot load a
# config without data. The other configs are always there, empty or not.
OPTIONAL_CONFIGS = frozenset(BRANCH_CONFIGS.values())


def released_configs(rows: Mapping[str, int]) -> list[str]:
    """The configs a release has, in CONFIGS order, given each one's row count."""
    return [name for name in CONFIGS if rows.get(name) or name not in OPTIONAL_CONFIGS]


class ReleaseError(TrajhubError):
    """A release cannot be built, stored or pushed as asked."""


# One (model, instance)'s runs: main trajectories, trajectory rewards, step rewards.
RunGroup = tuple[list[dict], list[Mapping], list[Mapping]]


@dataclass(frozen=True)
class ReleaseInputs:
    """Everything a release is made of, read from the store by the asset, group by group.

    runs: RunGroups in (model, instance) order, each one (model, instance)'s main
    conversations ({"meta", "tools", "messages"}, as merge returns them, model = the model's
    name), their TRAJECTORY_REWARDS-like rows (run_id, reward, outcome, mean_step_reward or
    step_mean, checklist_pass_rate, reward_version or the weight_* columns) and step reward rows
    (run_id, step_index, step_reward, conversation_id optional); pairs: PREFERENCE_PAIRS tables
    in instance order (one per instance); tasks: the TASKS table. A release holds one group of
    each at a time, never every row.
    """

    tasks: pa.Table
    runs: Iterable[RunGroup]
    pairs: Iterable[pa.Table]
    calibration: CalibrationReport | None = None
    models: list[Mapping] = field(default_factory=list)  # {name, scaffold, samples}: for the card
    reward_weights: Mapping[str, float] | None = None
    pair_policy: Mapping[str, object] | None = None  # min_margin, max_pairs, ties: for the card
    # BRANCH_PAIRS tables in (model, instance) order, and the branches behind them (branch_accounting)
    branch_pairs: Iterable[pa.Table] = ()
    branching: Mapping[str, float] | None = None

    @classmethod
    def from_rows(
        cls,
        tasks: pa.Table,
        trajectories: list[dict],
        trajectory_rewards: list[Mapping],
        step_rewards: list[Mapping],
        pairs: pa.Table,
        **options,
    ) -> ReleaseInputs:
        """Inputs held in memory, in any order: grouped by (model, instance), rewards and steps
        with their run."""
        groups: dict[tuple[str, str], RunGroup] = {}
        group_of: dict[str, RunGroup] = {}
        for t in trajectories:
            group = groups.setdefault((t["meta"]["model"], t["meta"]["instance"]), ([], [], []))
            group[0].append(t)
            group_of[t["meta"]["run_id"]] = group
        for rows, i in ((trajectory_rewards, 1), (step_rewards, 2)):
            for row in rows:
                if row["run_id"] in group_of:
                    group_of[row["run_id"]][i].append(row)
        return cls(tasks, [groups[key] for key in sorted(groups)], [pairs], **options)


@dataclass
class Release:
    path: Path
    version: str
    rows: dict[str, int]
    files: dict[str, dict]
    card: str
    reused: bool = False

    def metadata(self) -> dict:
        """Plain values for the asset's metadata."""
        return {
            "path": str(self.path),
            "version": self.version,
            "reused": self.reused,
            **{f"rows_{name}": n for name, n in self.rows.items()},
        }


# -- tables ----------------------------------------------------------------------------------
def _step_positions(messages: list[Mapping]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("generation")]


def _run_rows(group: RunGroup, category: Mapping[str, str], released: set[str]) -> tuple[list[dict], list[dict]]:
    """One group's trajectories and step_rewards rows, each in release order."""
    group_trajectories, group_rewards, group_steps = group
    rewards = {r["run_id"]: r for r in group_rewards}
    runs: dict[str, dict] = {}
    trajectories = []
    for t in group_trajectories:
        meta = t["meta"]
        if meta["run_id"] in released:
            raise ReleaseError(f"run {meta['run_id']!r} has two trajectories: pass only its main conversation")
        released.add(meta["run_id"])
        positions = _step_positions(t["messages"])
        runs[meta["run_id"]] = {"meta": meta, "positions": positions}
        row = rewards.get(meta["run_id"], {})
        trajectories.append(
            {
                "run_id": meta["run_id"],
                "model": meta["model"],
                "instance_id": meta["instance"],
                "category": category.get(meta["instance"]),
                "attempt": meta.get("attempt"),
                "conversation_id": meta.get("conversation_id"),
                "messages": [chat_message(m) for m in t["messages"]],
                "tools_json": tools_json(t.get("tools") or []),
                "generated_indices": positions,
                "n_steps": len(positions),
                "reward": row.get("reward"),
                "outcome": row.get("outcome"),
                "mean_step_reward": row.get("mean_step_reward", row.get("step_mean")),
                "checklist_pass_rate": row.get("checklist_pass_rate"),
                "reward_version": reward_version(row) if row else None,
            }
        )
    trajectories.sort(key=lambda r: (r["model"], r["instance_id"], r["attempt"] or 0, r["run_id"]))

    steps = []
    for s in group_steps:
        run = runs.get(s["run_id"])
        if run is None or (s.get("conversation_id") and s["conversation_id"] != run["meta"].get("conversation_id")):
            continue  # a step of a run or conversation that is not released
        k, meta = int(s["step_index"]), run["meta"]
        steps.append(
            {
                "run_id": s["run_id"],
                "model": meta["model"],
                "instance_id": meta["instance"],
                "attempt": meta.get("attempt"),
                "step_index": k,
                "message_index": run["positions"][k] if k < len(run["positions"]) else None,
                "step_reward": s.get("step_reward"),
                "reward_version": reward_version(rewards[s["run_id"]]) if s["run_id"] in rewards else None,
            }
        )
    steps.sort(key=lambda r: (r["model"], r["instance_id"], r["attempt"] or 0, r["run_id"], r["step_index"]))
    return trajectories, steps


def release_batches(inputs: ReleaseInputs) -> Iterator[tuple[str, pa.Table]]:
    """(config, rows) in release order, one input group at a time: the configs' rows with fixed
    schemas, each config's batches in its fixed row order."""
    category = {r["instance_id"]: r["category"] for r in inputs.tasks.select(["instance_id", "category"]).to_pylist()}
    released: set[str] = set()
    last = None
    for group in inputs.runs:
        trajectories, steps = _run_rows(group, category, released)
        if not trajectories:
            continue
        first = (trajectories[0]["model"], trajectories[0]["instance_id"])
        if last is not None and first <= last:
            raise ReleaseError(f"release inputs out of order: runs of {first} after those of {last}")
        last = (trajectories[-1]["model"], trajectories[-1]["instance_id"])
        yield "trajectories", pa.Table.from_pylist(trajectories, schema=TRAJECTORY_SCHEMA)
        yield "step_rewards", pa.Table.from_pylist(steps, schema=STEP_REWARD_SCHEMA)
    last = None
    for table in inputs.pairs:
        pairs = table.select(PREFERENCE_PAIRS.schema.names).cast(PREFERENCE_PAIRS.schema)
        pairs = pairs.sort_by([("instance_id", "ascending"), ("kind", "ascending"), ("pair_id", "ascending")])
        if not pairs.num_rows:
            continue
        first = pairs["instance_id"][0].as_py()
        if last is not None and first <= last:
            raise ReleaseError(f"release inputs out of order: pairs of {first!r} after those of {last!r}")
        last = pairs["instance_id"][-1].as_py()
        yield "preferences", pairs
    for table in inputs.branch_pairs:
        pairs = table.select(BRANCH_PAIRS.schema.names).cast(BRANCH_PAIRS.schema)
        order = [(name, "ascending") for name in ("parent_run_id", "branch_step", "pair_id")]
        for kind, name in BRANCH_CONFIGS.items():
            if (rows := pairs.filter(pc.equal(pairs["kind"], kind)).sort_by(order)).num_rows:
                yield name, rows
    yield "tasks", inputs.tasks.select(TASK_SCHEMA.names).cast(TASK_SCHEMA).sort_by("instance_id")


def release_tables(inputs: ReleaseInputs) -> dict[str, pa.Table]:
    """The four configs whole, in memory (small releases and tests; build_release streams)."""
    batches: dict[str, list[pa.Table]] = {name: [] for name in CONFIGS}
    for name, batch in release_batches(inputs):
        batches[name].append(batch)
    return {
        name: pa.concat_tables(tables) if tables else SCHEMAS[name].empty_table() for name, tables in batches.items()
    }


# -- card ------------------------------------------------------------------------------------
def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return name
    return "n>10M"


def _markdown_table(header: list[str], rows: Iterable[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


@dataclass
class CardCounts:
    """The card's figures, added up batch by batch as the release is written."""

    task_category: dict[str, str | None]
    rows: Counter = field(default_factory=Counter)
    trajectories: Counter = field(default_factory=Counter)  # per model
    reward_sum: dict[str, float] = field(default_factory=dict)  # per model, known rewards only
    rewarded: Counter = field(default_factory=Counter)
    steps: Counter = field(default_factory=Counter)
    as_chosen: Counter = field(default_factory=Counter)
    as_rejected: Counter = field(default_factory=Counter)
    categories: set = field(default_factory=set)  # of trajectories, when known
    trajectories_by_category: Counter = field(default_factory=Counter)
    pairs_by_category: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    branch_basis: Counter = field(default_factory=Counter)  # tests | reward
    versions: set = field(default_factory=set)

    @classmethod
    def of_tasks(cls, tasks: pa.Table) -> CardCounts:
        names, categories = tasks.column("instance_id").to_pylist(), tasks.column("category").to_pylist()
        return cls(dict(zip(names, categories, strict=True)))

    def add(self, name: str, batch: pa.Table) -> None:
        self.rows[name] += batch.num_rows
        if name == "trajectories":
            for t in batch.select(["model", "category", "reward", "reward_version"]).to_pylist():
                self.trajectories[t["model"]] += 1
                if t["reward"] is not None:  # summed in row order, as a mean of the whole column would
                    self.reward_sum[t["model"]] = self.reward_sum.get(t["model"], 0) + t["reward"]
                    self.rewarded[t["model"]] += 1
                if t["category"]:
                    self.categories.add(t["category"])
                self.trajectories_by_category[t["category"]] += 1
                if t["reward_version"]:
                    self.versions.add(t["reward_version"])
        elif name == "preferences":
            columns = ["kind", "instance_id", "chosen_model", "rejected_model", "reward_version"]
            for p in batch.select(columns).to_pylist():
                self.as_chosen[p["chosen_model"]] += 1
                self.as_rejected[p["rejected_model"]] += 1
                self.pairs_by_category[self.task_category.get(p["instance_id"])] += 1
                self.kinds[p["kind"]] += 1
                if p["reward_version"]:
                    self.versions.add(p["reward_version"])
        elif name == "step_rewards":
            self.steps.update(batch.column("model").to_pylist())
        elif name in OPTIONAL_CONFIGS:
            self.kinds.update(batch.column("kind").to_pylist())
            if name == "branch_continuations":  # one row per pair of continuations compared and kept
                self.branch_basis.update(batch.column("basis").to_pylist())

    def mean_reward(self, model: str) -> float | None:
        return self.reward_sum[model] / self.rewarded[model] if self.rewarded[model] else None


def branch_story(branching: Mapping[str, float] | None, basis: Mapping[str, int]) -> str:
    """The card's account of the branches behind the branch configs."""
    if not branching or not branching.get("continuations"):
        return "No run was branched for this release (`branching` in the project file)."
    b = branching
    unpriced = b.get("live_calls_without_cost", 0)
    cost = f"${b['cost_usd']:.4f}" + (
        f" for the calls with a price; {unpriced} of {b['live_calls']} live calls had none (cost unknown)"
        if unpriced
        else ""
    )
    return (
        f"Branches: {b['points']} branch points of {b['runs_branched']} recorded runs "
        f"({b['points'] / b['runs_branched']:.2f} per branched run), {b['continuations']} continuations "
        f"({b['continuations'] / b['points']:.2f} samples per point): {b['resolved']} resolved the task, "
        f"{b['refused']} were refused (their recorded prefix no longer reproduced), {b['failed'] - b['refused']} "
        f"failed otherwise. The live calls cost {cost}.\n\n"
        "Each continuation replayed its run's recorded steps before the branch step in a fresh "
        "sandbox, each prompt verified, then went on live. In a branch pair both sides continue the "
        "same prefix; chosen is the continuation that resolved the task, else passed a larger share "
        "of its tests, else has the higher trajectory reward by the margin. Of the "
        f"{sum(basis.values())} pairs of continuations, {basis.get('tests', 0)} were chosen by tests and "
        f"{basis.get('reward', 0)} by reward (`basis`; each has a `branch_continuations` row, and a "
        "`branch_steps` row when they first differ in an assistant turn). Each row keeps both sides' "
        "`resolved`, `tests_passed`, `tests_total` and the `rule_hits` of the steps it holds, and "
        "`parent_run_id`, `branch_step`."
    )


def dataset_card(counts: CardCounts, config, version: str, inputs: ReleaseInputs) -> str:
    """README.md: YAML header (configs, license, task categories, size) and the story of the data."""
    from huggingface_hub import DatasetCardData

    rows = {name: counts.rows[name] for name in released_configs(counts.rows)}
    header = DatasetCardData(
        license=config.license,
        pretty_name=config.name,
        task_categories=["text-generation"],
        tags=["code", "agents", "tool-use", "trajectories", "dpo", "trajhub"],
        size_categories=[size_category(max(rows.values(), default=0))],
        configs=[
            {"config_name": name, "data_files": [{"split": SPLIT, "path": f"data/{name}/{SPLIT}-*"}]} for name in rows
        ],
    ).to_yaml()

    models = sorted(set(counts.trajectories) | set(counts.as_chosen) | set(counts.as_rejected))
    model_rows = [
        [m, counts.trajectories[m], counts.mean_reward(m), counts.as_chosen[m], counts.as_rejected[m], counts.steps[m]]
        for m in models
    ]
    task_category = counts.task_category
    categories = sorted(set(task_category.values()) | counts.categories)
    tasks_by_cat = Counter(task_category.values())
    category_rows = [
        [c, tasks_by_cat[c], counts.trajectories_by_category[c], counts.pairs_by_category[c]] for c in categories
    ]
    kinds = counts.kinds
    versions = sorted(counts.versions)
    pair_sources = [
        ["trajectory", "preferences", kinds.get("trajectory", 0), "two whole runs of one task"],
        ["shared prefix", "preferences", kinds.get("step", 0), "the next step of two runs after a prefix they shared"],
        ["branch", "branch_steps", kinds.get("branch_step", 0), "the first differing turn of two continuations"],
        ["branch", "branch_continuations", kinds.get("branch_continuation", 0), "two whole continuations"],
    ]
    branches = branch_story(inputs.branching, counts.branch_basis)
    weights = ", ".join(f"{k} {v:g}" for k, v in (inputs.reward_weights or {}).items()) or "as configured"
    policy = inputs.pair_policy or {"min_margin": config.min_margin, "max_pairs": config.max_pairs_per_instance}
    calibration = (
        inputs.calibration.markdown().replace("## Reward calibration\n\n", "")
        if inputs.calibration
        else "No human labels yet: the rewards have not been checked against people."
    )
    message_keys = [[f"`{f.name}`", CHAT_MESSAGE_DOCS[f.name]] for f in CHAT_MESSAGE]
    made_with = (
        "\n".join(
            f"- `{m['name']}` with the `{m.get('scaffold', '?')}` scaffold, {m.get('samples', 1)} attempt(s) per task"
            for m in inputs.models
        )
        or "- (not recorded)"
    )

    body = f"""
# {config.name}

Coding-agent trajectories, step rewards and DPO preference pairs, release `{version}`,
made with trajhub from the recorded LLM calls of agents solving coding tasks.

## Configs

{_markdown_table(["config", "rows", "what"], [[n, rows[n], CONFIGS[n]] for n in rows])}

```python
from datasets import load_dataset
pairs = load_dataset("{config.hf_repo or config.name}", "preferences", split="{SPLIT}")
```

`preferences` is TRL's conversational preference format (`prompt`, `chosen`, `rejected`: lists of
messages); `trajectories.messages` is TRL's conversational language-modeling format. Tools are
stored as JSON in `tools_json` (their schemas differ too much for one Arrow type): pass
`json.loads(row["tools_json"])` as `tools` to the chat template. `generated_indices` lists the
messages the model itself produced (others were sent by the scaffold), for loss masking.

Every message, in every config that holds messages, has these keys (unset ones are null):

{_markdown_table(["key", "what"], message_keys)}

### Pairs by source

{_markdown_table(["source", "config", "pairs", "what"], pair_sources)}

{branches}

## Counts per model

{_markdown_table(["model", "trajectories", "mean reward", "pairs as chosen", "pairs as rejected", "steps"], model_rows)}

## Counts per category

{_markdown_table(["category", "tasks", "trajectories", "pairs"], category_rows)}

## Rewards

- **Trajectory reward**: weighted mean of the known components ({weights}): `outcome` (1 when
  the task's tests all pass after the run, else 0), the mean step reward, and the checklist pass
  rate judged check by check; unknown components are left out and the weights renormalized.
- **Step reward**: an LLM judge's rubric per assistant step (goal progress, tool choice, argument
  correctness, use of earlier information, non-redundancy), `Σ w_i · r_i`, each score with the
  judge's reason; deterministic rule hits (repeated calls, tool errors, invalid arguments,
  forbidden commands) are kept with their evidence in the store.
- **Pairs**: trajectory pairs rank two runs of one task by trajectory reward, step pairs rank
  the next assistant step after a shared prefix by step reward; margin at least
  {policy.get("min_margin")}, at most {policy.get("max_pairs")} pairs per task and kind,
  spread evenly over models. `prompt_shared` is false where the two runs' first context differed
  (dates, paths): the chosen run's context is then the prompt. Branch pairs (configs
  `branch_steps`, `branch_continuations`) compare continuations of one recorded run from one
  step, by tests first (below).
- Reward versions in this release: {", ".join(f"`{v}`" for v in versions) or "none"}.

## Calibration

{calibration}

## How it was made

Each task ran in a fresh Docker sandbox; the agent's LLM calls went through a LiteLLM proxy that
recorded them, credentials removed; conversations were rebuilt from the calls, scored by rules
and an LLM judge, paired, and released by trajhub's Dagster assets. Models:

{made_with}

Every text field passed a secret scan (API keys, tokens, `Authorization` headers) before release;
thinking signatures and redacted thinking data, opaque base64, are not scanned.
Same store, same library versions (see `manifest.json`) → the same files, byte for byte.
"""
    return f"---\n{header.strip()}\n---\n{body}"


# -- writing ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Shards:
    """One config's shards, cut every `rows_per_shard` rows as its batches come: each shard is
    scanned, then written unless a secret has been found anywhere (the scan goes on, to name every
    hit). Written as part-<i>.parquet and named train-<i>-of-<n> once n is known."""

    def __init__(self, directory: Path, name: str, rows_per_shard: int, scanner: SecretScanner, hits: list[Hit]):
        self.folder = directory / "data" / name
        self.name, self.rows_per_shard, self.scanner, self.hits = name, rows_per_shard, scanner, hits
        self.pending: list[pa.Table] = []
        self.buffered = self.rows = self.shards = 0

    def add(self, batch: pa.Table) -> None:
        self.pending.append(batch)
        self.buffered += batch.num_rows
        while self.buffered >= self.rows_per_shard:
            self._cut(self.rows_per_shard)

    def _cut(self, n: int) -> None:
        rows = pa.concat_tables(self.pending)
        # One chunk, as a slice of one whole table was: page cuts follow chunks, and so do the bytes.
        shard, rest = rows.slice(0, n).combine_chunks(), rows.slice(n)
        self.pending, self.buffered = [rest], rest.num_rows
        self.hits.extend(self.scanner.sparse_table(self.name, shard, start=self.rows))
        self.rows += n
        if not self.hits:
            import datasets
            from datasets.table import InMemoryTable

            self.folder.mkdir(parents=True, exist_ok=True)
            # A fingerprint given: else `datasets` pickles and hashes the whole shard to make one,
            # for a transform cache a release never uses (a third of a release's writing time).
            dataset = datasets.Dataset(InMemoryTable(shard), fingerprint=f"trajhub-{self.name}-{self.shards}")
            dataset.to_parquet(str(self.folder / f"part-{self.shards:05d}.parquet"), batch_size=ROW_GROUP_ROWS)
        self.shards += 1

    def close(self, schema: pa.Schema) -> int:
        """Write the last shard (an empty config still gets a file, unless it is optional), name
        them all; the row count."""
        if self.buffered or not (self.shards or self.name in OPTIONAL_CONFIGS):
            self.pending.append(schema.empty_table())
            self._cut(self.buffered)
        if not self.hits:
            for i in range(self.shards):
                os.replace(
                    self.folder / f"part-{i:05d}.parquet", self.folder / f"{SPLIT}-{i:05d}-of-{self.shards:05d}.parquet"
                )
        return self.rows


def _manifest(directory: Path, name: str, version: str, rows: Mapping[str, int]) -> dict:
    import datasets

    files = {
        str(p.relative_to(directory)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    return {
        "name": name,
        "version": version,
        "rows": dict(rows),
        "files": files,
        "writers": {"datasets": datasets.__version__, "pyarrow": pa.__version__},
    }


def data_version(directory: Path) -> str:
    """The default version: a hash of the data shards, so equal data gets one directory."""
    digest = hashlib.sha256()
    for path in sorted((directory / "data").rglob("*.parquet")):
        digest.update(f"{path.relative_to(directory)}\0{_sha256(path)}\n".encode())
    return f"sha-{digest.hexdigest()[:12]}"


def verify_release(directory: str | Path) -> dict:
    """The manifest, after checking every file against it (before a push, after a copy)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as error:
        raise ReleaseError(f"{directory}: no readable manifest.json: {error}") from error
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise ReleaseError(f"{path}: missing or changed since the release was built")
    return manifest


def build_release(
    inputs: ReleaseInputs, config, root: str | Path, version: str | None = None, rows_per_shard: int = ROWS_PER_SHARD
) -> Release:
    """Build, scan and store a release under <root>/releases/<name>/<version>/.

    `config` is the ReleaseConfig. With no version, the data's hash is the version. An existing
    version directory with the same manifest is reused; with a different one it is an error.
    """
    import datasets

    if version is not None and not _VERSION.match(version):
        raise ReleaseError(f"release version {version!r}: use letters, digits and . _ + - only")
    if not _VERSION.match(config.name):
        raise ReleaseError(f"release name {config.name!r}: use letters, digits and . _ + - only")
    calibration = inputs.calibration.markdown() if inputs.calibration else None

    releases = Path(root) / "releases" / config.name
    releases.mkdir(parents=True, exist_ok=True)
    staging = releases / f".staging-{uuid.uuid4().hex}"
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # Each shard is scanned before it is written; a hit stops the writing, the rest is still
        # scanned, and the staging directory goes: nothing is released when a field holds a key.
        scanner, hits = SecretScanner(), []
        shards = {name: _Shards(staging, name, rows_per_shard, scanner, hits) for name in CONFIGS}
        counts = CardCounts.of_tasks(inputs.tasks)
        for name, batch in release_batches(inputs):
            shards[name].add(batch)
            counts.add(name, batch)
        rows = {name: shards[name].close(SCHEMAS[name]) for name in CONFIGS}
        rows = {name: rows[name] for name in released_configs(rows)}
        hits.sort(key=lambda hit: list(CONFIGS).index(hit.table))  # config by config, as listed
        hits += scanner.document("calibration.md", calibration) if calibration else []
        if hits:
            raise SecretLeakError(hits)
        version = version or data_version(staging)
        card = dataset_card(counts, config, version, inputs)
        check_no_secrets({}, {"README.md": card}, scanner)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if calibration:
            (staging / "calibration.md").write_text(calibration, encoding="utf-8")
        manifest = _manifest(staging, config.name, version, rows)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        target = releases / version
        if target.exists():
            existing = verify_release(target)
            if existing["files"] != manifest["files"]:
                raise ReleaseError(
                    f"{target} already holds a different release {version!r}; "
                    "choose another version or leave it unset (the data hash)"
                )
            log.info("release %s %s unchanged: reusing %s", config.name, version, target)
            return Release(target, version, rows, manifest["files"], card, reused=True)
        try:
            os.replace(staging, target)  # a reader sees no release or a whole one
        except OSError as error:  # another build got there first
            raise ReleaseError(f"{target}: cannot store the release: {error}") from error
        log.info("release %s %s written to %s (%s)", config.name, version, target, rows)
        return Release(target, version, rows, manifest["files"], card)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if progress:
            datasets.enable_progress_bars()


def push_release(release: Release, config, environ: Mapping[str, str] | None = None, api=None) -> str | None:
    """Upload the release directory as it is (byte-identical files) to `config.hf_repo`.

    Only when both the repo and the token (in the variable `config.hf_token_env`) are set; returns
    the commit URL, or None when skipped. `api` is an HfApi (a fake in tests).
    """
    token = (os.environ if environ is None else environ).get(config.hf_token_env)
    if not config.hf_repo or not token:
        missing = "release.hf_repo" if not config.hf_repo else f"${config.hf_token_env}"
        log.info("release %s %s not pushed: %s is not set", config.name, release.version, missing)
        return None
    verify_release(release.path)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(config.hf_repo, repo_type="dataset", exist_ok=True, token=token)
    # Shard names change with row counts: remove the previous release's shards in the same commit.
    commit = api.upload_folder(
        repo_id=config.hf_repo,
        repo_type="dataset",
        folder_path=str(release.path),
        commit_message=f"{config.name} {release.version}",
        token=token,
        delete_patterns=["data/**"],
    )
    log.info("release %s %s pushed to %s", config.name, release.version, config.hf_repo)
    return getattr(commit, "commit_url", None) or str(commit)
