"""judge_rewards: an LLM judge, through the `openai` client, over a partition's runs.

Two kinds of judge requests per run, each answered with one JSON array:
- checklist: ONE request for every category of the task's checklist (OctoCodingBench
  style; `checklist_per_category` asks category by category). The judge answers each check
  success/fail with a reason. A check it leaves out counts as failed (`omitted`), never
  ignored. CSR = share of checks passed, ISR = 1 when all pass. Categories whose check ids
  collide go to separate requests, since the answer names checks by id.
- steps: ONE request for every scored step of the run (steps as in rewards.rules: generated
  assistant messages, indexed per conversation), the trajectory shown once with the steps
  listed by id ("<conversation>#<index>"); each step is graded from what came before it and
  its own tool results. The rubric scores goal progress, tool choice, argument correctness,
  use of earlier information and non-redundancy 1..5, each with a reason; r_i = (score -
  1) / 4 and step_reward = Σ w_i·r_i / Σ w_i with the config's weights. A run longer than
  `max_steps_per_request` steps or `max_prompt_chars` characters of steps is split into
  chunks at step boundaries, the trajectory before a chunk shortened to TRANSCRIPT_CHARS;
  `max_steps_per_request: 1` is the per-step judge.
So a run that fits costs 2 requests. The answers are strict structured output
(response_format json_schema, strict: true); the root is an object holding the array
({"checks": [...]}, {"steps": [...]}) because strict schemas need an object root.

Answers are validated item by item against the item schema sent: an item missing (a
step), malformed, answered twice, or named by an id not asked for leaves only the items
concerned unusable (a check left out is `omitted`, unless the answer also holds an item
naming no asked check: then the missing checks are unusable too). The judge is asked again
(judge.max_retries times) for the unusable items only, with the problems named (REPAIR);
when retries run out each such item is a judge error: its row carries the error and null
scores, never a silent 0. A run with an errored check has null CSR/ISR; its mean step reward
is over the steps judged, with n_step_errors beside it. Transport errors (rate limits,
timeouts, 5xx) are retried with backoff by the openai client itself (max_retries,
timeout_s), which waits as long as a 429's `retry-after`/`retry-after-ms` asks up to 120 s
and does not retry a longer wait; when they persist every item still unanswered in the
request is an error, and never the whole partition.

Budgets (judge.max_cost_per_run_usd, judge.max_cost_per_release_usd) are checked before
every request against the cost the endpoint reported (our proxy prices each call in
COST_HEADER; an endpoint that reports none spends nothing here): this Judge's spending,
plus, for the release budget, the cost recorded in every cache entry of the store. Once one
is reached no request is sent: the items left are error rows naming the budget, its value
and the amount spent, and are not cached. Requests in flight finish, so a run may overshoot
by up to max_concurrent requests.

Cache: one JSON file per request under <store root>/cache/judge/, named by
sha256(judge model, prompt version, input hash), where the input hash covers the exact
messages and schema sent. Files are written to a temporary name and renamed, so parallel
processes never see half an entry (two processes judging the same request at once both pay
for it and the last rename wins). Verdicts and malformed-answer errors are cached, so
re-materializing a partition makes zero calls; transport and budget errors are not, and
`retry_errors=True` re-asks requests cached with errors. The endpoint (for our proxy: its
URL and key, which start it) and the HTTP client are set up on the first cache miss only,
so a fully cached run never starts the proxy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import jsonschema
import openai
import pyarrow as pa

from trajhub_assets.config import JudgeConfig
from trajhub_assets.errors import ConfigError
from trajhub_assets.rewards.rules import MAIN_AGENT_KINDS, Run, Step, build_run, group_runs, truncate
from trajhub_assets.rewards.schema import JUDGE_CHECKS, JUDGE_STEPS, JUDGE_SUMMARY

log = logging.getLogger(__name__)

RUBRIC = {
    "goal_progress": "Does the step move the user's task toward its goal?",
    "tool_choice": "Is the tool the right one for what the step tries to do? For a step without a "
    "tool call: was answering without a tool right?",
    "argument_correctness": "Are the tool arguments correct: existing paths, valid values, commands "
    "that do what is meant? For a step without a tool call: is the answer "
    "accurate?",
    "use_of_information": "Does the step use what the task and earlier tool results revealed "
    "(no ignored errors, no guessing of facts already shown)?",
    "non_redundancy": "Does the step avoid repeating work that was already done?",
}
SCORES = (1, 2, 3, 4, 5)
TEMPERATURE = 0.0  # the same input should get the same verdict
COST_HEADER = "x-litellm-response-cost"  # our LiteLLM proxy prices each call here
LIMITS = {"system": 6000, "user": 4000, "assistant": 3000, "tool": 2000}  # characters per message
TRANSCRIPT_CHARS = 60_000
DIFF_CHARS = 6000

CHECKLIST_SYSTEM = """You audit the trajectory of a coding agent against a checklist.
Judge every check listed, each exactly once, from the evidence in the trajectory: the
system prompt, the user's messages, the agent's messages, its tool calls and their
results, and the outcome after the run. A check passes ("success") only when the
trajectory shows it was met; when the evidence is missing or contradicts it, it fails
("fail"). Give a short reason that points at the evidence. Long texts were shortened;
a "[... N characters truncated ...]" marker shows where.
Reply with JSON only: {"checks": [{"check_id": "...", "result": "success" | "fail", "reason": "..."}]}"""

STEP_SYSTEM = """You grade steps of a coding agent's trajectory. A step is one assistant message
and the results of the tools it called. Grade every step listed under "The steps to grade",
each exactly once, given only the trajectory before it and its own tool results (what came
after it does not count). Score each criterion with an integer from 1 (bad) to 5 (excellent)
and a one-sentence reason:
{criteria}
Long texts were shortened; a "[... N characters truncated ...]" marker shows where.
Reply with JSON only: {{"steps": [{{"step_id": "...", {shape}}}]}}"""

REPAIR = (
    "Part of your answer could not be used: {problems}. Reply again with only the JSON object "
    "the schema asks for, holding only these {what}: {ids}."
)


# -- prompts -----------------------------------------------------------------------------
def render_message(position: int, message: dict) -> str:
    role = message.get("role") or "?"
    limit = LIMITS.get(role, 3000)
    head = f"[{position}] {role}"
    if role == "tool":
        head += f" {message.get('name') or ''} (answers {message.get('tool_call_id')})"
        head += " ERROR" if message.get("is_error") else ""
    parts = [head]
    if message.get("reasoning_content"):
        parts.append("(thinking) " + truncate(message["reasoning_content"], limit // 2))
    if message.get("content"):
        parts.append(truncate(message["content"], limit))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(
            f"-> call {function.get('name')} (id {call.get('id')}): {truncate(function.get('arguments') or '', limit)}"
        )
    return "\n".join(parts)


def render_transcript(blocks: list[str], budget: int = TRANSCRIPT_CHARS) -> str:
    """Join rendered messages; over budget, keep the beginning (system prompt, request) and
    the most recent messages, and mark what was left out."""
    if sum(len(b) + 2 for b in blocks) <= budget:
        return "\n\n".join(blocks)
    head, used = [], 0
    for block in blocks:
        if used + len(block) > budget * 0.3:
            break
        head.append(block)
        used += len(block) + 2
    tail: list[str] = []
    for block in reversed(blocks[len(head) :]):
        if used + len(block) > budget:
            break
        tail.insert(0, block)
        used += len(block) + 2
    omitted = len(blocks) - len(head) - len(tail)
    return "\n\n".join(head + [f"[... {omitted} messages omitted ...]"] + tail)


def user_request(task: dict) -> str:
    query = task.get("user_query")
    return "\n\n".join(query) if isinstance(query, list) else str(query or "")


def _outcome_text(outcome: dict | None) -> str:
    if not outcome:
        return "No outcome was recorded."
    tests = (
        "no test counts"
        if not outcome.get("tests_total")
        else f"{outcome.get('tests_passed')}/{outcome['tests_total']} tests passed"
    )
    return (
        f"Tests: {tests}; test exit code {outcome.get('test_exit_code')}; agent timed out: "
        f"{bool(outcome.get('timed_out'))}; agent exit code {outcome.get('agent_exit_code')}.\n"
        f"Final diff:\n{truncate(outcome.get('diff') or '(empty)', DIFF_CHARS)}"
    )


def _criterion() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["score", "reason"],
        "properties": {"score": {"type": "integer", "enum": list(SCORES)}, "reason": {"type": "string"}},
    }


STEP_SCHEMA = {  # the rubric of one step: each item of a steps answer holds it beside its step_id
    "type": "object",
    "additionalProperties": False,
    "required": list(RUBRIC),
    "properties": {name: _criterion() for name in RUBRIC},
}
ARRAYS = {"checklist": ("checks", "check_id"), "steps": ("steps", "step_id")}  # kind -> (array, id field)


def answer_schema(kind: str, ids: list[str] | tuple[str, ...]) -> dict:
    """The strict schema of an answer about `ids`: {"<array>": [one object per item]}."""
    array, id_field = ARRAYS[kind]
    if kind == "checklist":
        properties = {
            "result": {"type": "string", "enum": ["success", "fail"]},
            "reason": {"type": "string"},
        }
    else:
        properties = STEP_SCHEMA["properties"]
    item = {
        "type": "object",
        "additionalProperties": False,
        "required": [id_field, *properties],
        "properties": {id_field: {"type": "string", "enum": list(ids)}, **properties},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [array],
        "properties": {array: {"type": "array", "items": item}},
    }


@dataclass(frozen=True)
class JudgeRequest:
    label: str  # for logs: "<run> checklist", "<run> steps 1-40"
    kind: str  # "checklist" | "steps"
    messages: tuple[dict, ...]
    ids: tuple[str, ...]  # the check ids or step ids it asks about, in order

    @cached_property
    def schema(self) -> dict:
        return answer_schema(self.kind, self.ids)

    @cached_property  # prompts are long: hash each once
    def input_hash(self) -> str:
        payload = {"messages": self.messages, "schema": self.schema, "temperature": TEMPERATURE}
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ).hexdigest()

    def response_format(self) -> dict:
        return {
            "type": "json_schema",
            "json_schema": {"name": f"trajhub_{self.kind}", "schema": self.schema, "strict": True},
        }


def _checklist_groups(checklist: dict, per_category: bool) -> list[list[tuple[str, dict]]]:
    """(category, check) lists, one per request: every category in one, unless asked per
    category or check ids collide (the answer names checks by id alone)."""
    groups: list[list[tuple[str, dict]]] = []
    for category, group in checklist.items():
        checks = [(category, c) for c in group.get("checks") or []]
        if not checks:
            continue
        ids = {c["check_id"] for _, c in checks}
        if per_category or not groups or ids & {c["check_id"] for _, c in groups[-1]}:
            groups.append(checks)
        else:
            groups[-1] += checks
    return groups


def checklist_requests(
    run: Run, conversations: list[dict], task: dict, outcome: dict | None, per_category: bool = False
) -> list[tuple[JudgeRequest, list[tuple[str, dict]]]]:
    """(request, its (category, check) list) for the task's checklist: one request unless
    `per_category`."""
    main = sorted(
        (c for c in conversations if c["meta"].get("kind") in MAIN_AGENT_KINDS),
        key=lambda c: (c["meta"].get("started_at") or 0.0, c["meta"]["conversation_id"]),
    )
    blocks = []
    for conversation in main:
        blocks.append(
            f"=== conversation {conversation['meta']['conversation_id']} ({conversation['meta'].get('kind')}) ==="
        )
        blocks += [render_message(i, m) for i, m in enumerate(conversation["messages"])]
    transcript = render_transcript(blocks)
    checklist = task.get("checklist") or {}
    requests = []
    for checks in _checklist_groups(checklist, per_category):
        sections = []
        for category in dict.fromkeys(category for category, _ in checks):
            listed = "\n".join(
                f"- {c['check_id']} [{c.get('check_type')}]: {c['description']}" for cat, c in checks if cat == category
            )
            description = truncate(checklist[category].get("description") or "", 3000)
            sections.append(f"### Checks of category {category!r}\n{description}\n\n{listed}")
        prompt = (
            f"## The user's request\n{truncate(user_request(task), LIMITS['user'])}\n\n"
            "## Checks\n" + "\n\n".join(sections) + "\n\n"
            f"## Trajectory\n{transcript}\n\n## Outcome after the run\n{_outcome_text(outcome)}"
        )
        categories = ", ".join(dict.fromkeys(category for category, _ in checks))
        request = JudgeRequest(
            f"{run.run_id} checklist {categories}",
            "checklist",
            ({"role": "system", "content": CHECKLIST_SYSTEM}, {"role": "user", "content": prompt}),
            tuple(dict.fromkeys(c["check_id"] for _, c in checks)),
        )
        requests.append((request, checks))
    return requests


def step_id(step: Step) -> str:
    return f"{step.conversation_id}#{step.index}"


def _step_end(step: Step, positions: Mapping[int, int]) -> int:
    """One past the last message of the step: its assistant message and its tool results.
    `positions`: the index of each message of the step's conversation, by id() (its results are
    those message objects)."""
    answered = [positions[id(r)] for r in step.results.values() if positions.get(id(r), -1) > step.message_index]
    return max(answered, default=step.message_index) + 1


def step_requests(
    run: Run, conversations: list[dict], task: dict, max_steps: int, max_chars: int
) -> list[tuple[JudgeRequest, list[Step]]]:
    """(request, its steps) for the run's steps: one request, or chunks of consecutive steps
    of at most `max_steps` steps and `max_chars` characters of rendered step messages."""
    by_id = {c["meta"]["conversation_id"]: c for c in conversations}
    rendered = {cid: [render_message(i, m) for i, m in enumerate(c["messages"])] for cid, c in by_id.items()}
    positions = {cid: {id(m): i for i, m in enumerate(c["messages"])} for cid, c in by_id.items()}
    chunks: list[list[Step]] = [[]]
    size, ends = 0, {}  # characters shown in the current chunk; where it ends per conversation
    for step in run.steps:
        blocks, end = rendered[step.conversation_id], _step_end(step, positions[step.conversation_id])
        cost = sum(len(b) + 2 for b in blocks[ends.get(step.conversation_id, step.message_index) : end])
        if chunks[-1] and (len(chunks[-1]) >= max_steps or size + cost > max_chars):
            chunks.append([])
            size, ends = 0, {}
            cost = sum(len(b) + 2 for b in blocks[step.message_index : end])
        chunks[-1].append(step)
        size, ends[step.conversation_id] = size + cost, max(end, ends.get(step.conversation_id, 0))
    criteria = "\n".join(f"- {name}: {question}" for name, question in RUBRIC.items())
    shape = ", ".join(f'"{name}": {{"score": 1-5, "reason": "..."}}' for name in RUBRIC)
    system = STEP_SYSTEM.format(criteria=criteria, shape=shape)
    requests, first = [], 0
    for steps in filter(None, chunks):  # a run without steps asks nothing
        sections = []
        for cid in dict.fromkeys(s.conversation_id for s in steps):
            own = [s for s in steps if s.conversation_id == cid]
            blocks, begin = rendered[cid], own[0].message_index
            end = max(_step_end(s, positions[cid]) for s in own)
            before = render_transcript(blocks[:begin]) if begin else ""
            shown = "\n\n".join(part for part in (before, "\n\n".join(blocks[begin:end])) if part)
            sections.append(f"=== conversation {cid} ({by_id[cid]['meta'].get('kind')}) ===\n{shown}")
        listed = "\n".join(
            f"- step {step_id(s)}: message [{s.message_index}] of conversation {s.conversation_id}" for s in steps
        )
        prompt = (
            f"## The user's request\n{truncate(user_request(task), LIMITS['user'])}\n\n"
            "## Trajectory\n" + "\n\n".join(sections) + f"\n\n## The steps to grade\n{listed}"
        )
        requests.append(
            (
                JudgeRequest(
                    f"{run.run_id} steps {first + 1}-{first + len(steps)} of {len(run.steps)}",
                    "steps",
                    ({"role": "system", "content": system}, {"role": "user", "content": prompt}),
                    tuple(step_id(s) for s in steps),
                ),
                steps,
            )
        )
        first += len(steps)
    return requests


@dataclass
class RunPlan:
    """One run's judge requests, each with the checks or steps it answers."""

    run: Run
    checklist: list[tuple[JudgeRequest, list[tuple[str, dict]]]]
    steps: list[tuple[JudgeRequest, list[Step]]]

    @property
    def requests(self) -> list[JudgeRequest]:
        return [request for request, _ in self.checklist + self.steps]


def plan_partition(
    conversations: list[dict], task: dict, outcomes: dict[str, dict | None], config: JudgeConfig
) -> list[RunPlan]:
    plans = []
    for run_id, run_conversations in group_runs(conversations).items():
        run = build_run(run_conversations)
        plans.append(
            RunPlan(
                run,
                checklist_requests(run, run_conversations, task, outcomes.get(run_id), config.checklist_per_category),
                step_requests(run, run_conversations, task, config.max_steps_per_request, config.max_prompt_chars),
            )
        )
    return plans


# -- answers -----------------------------------------------------------------------------
def read_answer(content: str | None, request: JudgeRequest) -> tuple[dict[str, dict], dict[str, str]]:
    """(verdict by id, problem by id) from one answer; an id in neither was left out (a
    check: omitted). Each item is validated on its own against the schema's item schema."""
    array, id_field = ARRAYS[request.kind]
    text = (content or "").strip()
    if text.startswith("```"):  # a fenced block, as many models write even when asked not to
        text = text.strip("`").removeprefix("json").strip()
    try:
        answer = json.loads(text) if text else None
        problem = None if text else "the answer is empty"
    except ValueError as error:
        answer, problem = None, f"not JSON ({error})"
    items = answer.get(array) if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return {}, dict.fromkeys(request.ids, problem or f"the answer holds no {array!r} array")
    answered: dict[str, list[tuple[int, dict]]] = {}
    strays = []
    for position, item in enumerate(items):
        named = item.get(id_field) if isinstance(item, dict) else None
        if named in request.ids:
            answered.setdefault(named, []).append((position, item))
        else:
            strays.append(f"{array}/{position} names {id_field} {named!r}, not one asked for")
    validator = jsonschema.Draft202012Validator(request.schema["properties"][array]["items"])
    verdicts, problems = {}, {}
    for named, found in answered.items():
        if len(found) > 1:
            problems[named] = f"{named} answered {len(found)} times"
            continue
        position, item = found[0]
        error = next(iter(validator.iter_errors(item)), None)
        if error is None:
            verdicts[named] = item
        else:
            where = "/".join(map(str, [array, position, *error.absolute_path]))
            problems[named] = f"at {where}: {error.message}"
    if request.kind == "steps" or strays:  # a check left out is the judge's verdict, unless mangled
        for named in request.ids:
            if named not in answered:
                problems[named] = f"{named} not answered" + (f" ({'; '.join(strays)})" if strays else "")
    return verdicts, problems


# -- cache -------------------------------------------------------------------------------
class JudgeCache:
    """One JSON file per judge request; see the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("judge cache entry %s is unreadable, asking again: %s", path, error)
            return None

    def put(self, key: str, entry: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_text(json.dumps(entry), encoding="utf-8")  # ASCII: lone surrogates survive
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def spent_usd(self) -> float:
        """The judge cost recorded in every entry: what this store's judging has paid."""
        total = 0.0
        for path in self.root.glob("*/*.json"):
            try:
                total += json.loads(path.read_text(encoding="utf-8")).get("cost_usd") or 0.0
            except (OSError, ValueError):
                continue  # unreadable entries are asked again (get) and priced then
        return total


def cache_key(model: str, prompt_version: str, input_hash: str) -> str:
    return hashlib.sha256(f"{model}\0{prompt_version}\0{input_hash}".encode()).hexdigest()


# -- the judge ---------------------------------------------------------------------------
@dataclass
class JudgeResult:
    verdicts: dict[str, dict] = field(default_factory=dict)  # by check or step id
    errors: dict[str, str] = field(default_factory=dict)  # by id: items that have no usable verdict
    cached: bool = False
    cacheable: bool = True  # False for transport and budget errors: the next run asks again
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


def cache_entry(config: JudgeConfig, request: JudgeRequest, result: JudgeResult) -> dict:
    return {
        "judge_model": config.model,
        "prompt_version": config.prompt_version,
        "input_hash": request.input_hash,
        "label": request.label,
        "verdicts": result.verdicts,
        "errors": result.errors,
        "attempts": result.attempts,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": result.cost_usd,
        "created_at": time.time(),
    }


@dataclass
class JudgeUsage:
    """Totals for one partition, for the asset's metadata; requests / runs is the judge's
    requests per trajectory."""

    runs: int = 0
    items: int = 0  # checks and steps to judge
    prompts: int = 0  # judge requests planned, each one cache entry
    cache_hits: int = 0  # prompts answered from the cache
    requests: int = 0  # HTTP requests sent, retries included (counted by an httpx hook)
    errors: int = 0  # items without a verdict
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls_without_cost: int = 0  # answers whose price the endpoint did not report

    def metadata(self) -> dict:
        return {f"judge_{k}": v for k, v in asdict(self).items()}

    def __add__(self, other: JudgeUsage) -> JudgeUsage:  # totals over a batch of partitions
        return JudgeUsage(**{k: v + getattr(other, k) for k, v in asdict(self).items()})


class Judge:
    """A judge model behind an OpenAI-compatible endpoint, with a cache, a thread pool and
    the config's cost budgets; one per materialization, so the run budget spans its batch."""

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgeCache,
        *,
        proxy: Callable[[], tuple[str, str | None]] | None = None,
        retry_errors: bool = False,
    ):
        """The judge calls `config.base_url` with the key in `config.api_key_env`, else our
        proxy: `proxy()` gives its URL and key, and is called on the first cache miss (it
        starts the proxy). The proxy's key never goes anywhere else."""
        unknown = set(config.rubric_weights) - set(RUBRIC)
        if unknown:
            raise ConfigError(f"judge.rubric_weights: unknown criteria {sorted(unknown)}; known: {list(RUBRIC)}")
        if config.base_url:
            api_key = None
            if config.api_key_env:
                api_key = os.environ.get(config.api_key_env)
                if not api_key:
                    raise ConfigError(f"judge.api_key_env: environment variable {config.api_key_env!r} is not set")
            self._endpoint = lambda: (config.base_url, api_key)
        elif proxy is not None:
            self._endpoint = proxy
        else:
            raise ConfigError("judge.base_url is not set and no proxy was given to route the judge through")
        self.config, self.cache = config, cache
        self.retry_errors = retry_errors
        self.spent_usd = 0.0  # reported cost of this Judge's requests
        self.budget_reached: str | None = None  # the message, once a budget stopped judging
        self._release_spent: float | None = None  # the cache's recorded cost, read on first need
        self._requests = 0
        self._lock = threading.Lock()
        self.client: openai.OpenAI | None = None

    def _open(self) -> openai.OpenAI:
        if self.client is None:
            url, api_key = self._endpoint()
            self.client = openai.OpenAI(
                base_url=url,
                api_key=api_key or "no-key",  # a local endpoint or our proxy may need none
                timeout=self.config.timeout_s,
                max_retries=self.config.max_retries,
                http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]}),
            )
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count_request(self, request) -> None:
        with self._lock:
            self._requests += 1

    def key(self, request: JudgeRequest) -> str:
        return cache_key(self.config.model, self.config.prompt_version, request.input_hash)

    def judge(
        self, requests: list[JudgeRequest], headers: dict[str, str] | None = None
    ) -> tuple[list[JudgeResult], JudgeUsage]:
        """Results in the order of `requests`; identical requests are asked once. `headers`
        go with every request (the run id under which our proxy records the judge)."""
        usage = JudgeUsage(prompts=len(requests))
        started, requests_before = time.monotonic(), self._requests
        results: dict[str, JudgeResult] = {}
        todo: dict[str, JudgeRequest] = {}
        for request in requests:
            key = self.key(request)
            entry = self.cache.get(key)
            if entry is not None and "verdicts" in entry and not (entry["errors"] and self.retry_errors):
                results[key] = JudgeResult(
                    entry["verdicts"], entry["errors"], cached=True, attempts=entry.get("attempts", 0)
                )
            else:
                todo.setdefault(key, request)
        if todo:
            self._open()  # the first miss: only now is the endpoint (our proxy) needed
        with ThreadPoolExecutor(max_workers=self.config.max_concurrent, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._ask, request, headers): (key, request) for key, request in todo.items()}
            for future in as_completed(futures):
                key, request = futures[future]
                result = results[key] = future.result()
                if result.cacheable:  # written as results arrive: a crash keeps what was paid for
                    self.cache.put(key, cache_entry(self.config, request, result))
                usage.prompt_tokens += result.prompt_tokens
                usage.completion_tokens += result.completion_tokens
                if result.cost_usd is None:
                    usage.calls_without_cost += result.attempts
                else:
                    usage.cost_usd += result.cost_usd
        ordered = [results[self.key(request)] for request in requests]
        usage.cache_hits = sum(r.cached for r in ordered)
        usage.requests = self._requests - requests_before
        log.info(
            "judge %s: %d prompts, %d from cache, %d requests in %.1fs",
            self.config.model,
            usage.prompts,
            usage.cache_hits,
            usage.requests,
            time.monotonic() - started,
        )
        return ordered, usage

    def _over_budget(self) -> str | None:
        """The message of the first budget reached, else None."""
        config = self.config
        with self._lock:
            if self.budget_reached is None and config.max_cost_per_run_usd is not None:
                if self.spent_usd >= config.max_cost_per_run_usd:
                    self.budget_reached = (
                        f"judge budget judge.max_cost_per_run_usd = ${config.max_cost_per_run_usd:g} reached: "
                        f"this run spent ${self.spent_usd:.4f}; not judged"
                    )
            if self.budget_reached is None and config.max_cost_per_release_usd is not None:
                if self._release_spent is None:  # before this Judge wrote any entry
                    self._release_spent = self.cache.spent_usd()
                spent = self._release_spent + self.spent_usd
                if spent >= config.max_cost_per_release_usd:
                    self.budget_reached = (
                        f"judge budget judge.max_cost_per_release_usd = ${config.max_cost_per_release_usd:g} "
                        f"reached: the judge cache under {self.cache.root} records ${spent:.4f}; not judged"
                    )
            return self.budget_reached

    def _ask(self, request: JudgeRequest, headers: dict[str, str] | None) -> JudgeResult:
        result = JudgeResult()
        asked, messages, problems = request, list(request.messages), {}
        for _ in range(self.config.max_retries + 1):
            stop = self._over_budget()
            if stop is not None:
                result.errors.update(dict.fromkeys(asked.ids, stop))
                result.cacheable = False
                return result
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.config.model,
                    messages=messages,
                    response_format=asked.response_format(),
                    temperature=TEMPERATURE,
                    extra_headers=headers or None,
                )
                completion = raw.parse()
            except openai.APIError as error:  # the client already retried what is worth retrying
                log.warning("judge %s: %s", request.label, error)
                result.errors.update(dict.fromkeys(asked.ids, f"{type(error).__name__}: {error}"))
                result.cacheable = False
                return result
            result.attempts += 1
            if completion.usage is not None:
                result.prompt_tokens += completion.usage.prompt_tokens or 0
                result.completion_tokens += completion.usage.completion_tokens or 0
            cost = _float(raw.headers.get(COST_HEADER))
            if cost is not None:
                result.cost_usd = (result.cost_usd or 0.0) + cost
                with self._lock:
                    self.spent_usd += cost
            content = completion.choices[0].message.content if completion.choices else None
            verdicts, problems = read_answer(content, asked)
            result.verdicts.update(verdicts)
            if not problems:
                return result
            log.warning("judge %s: unusable items (attempt %d): %s", request.label, result.attempts, problems)
            # Ask again for the unusable items only, the earlier answer and its problems in view.
            asked = replace(request, ids=tuple(i for i in request.ids if i in problems))
            what = "checks" if request.kind == "checklist" else "steps"
            messages = [
                *request.messages,
                {"role": "assistant", "content": content or ""},
                {
                    "role": "user",
                    "content": REPAIR.format(
                        problems="; ".join(problems.values()), what=what, ids=", ".join(asked.ids)
                    ),
                },
            ]
        result.errors.update(
            {i: f"malformed judge answer after {result.attempts} attempts: {p}" for i, p in problems.items()}
        )
        return result


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


# -- rows --------------------------------------------------------------------------------
def check_row(
    run_id: str,
    attempt: int | None,
    category: str,
    check: dict,
    verdict: dict | None,
    error: str | None = None,
    **provenance,
) -> dict:
    """A JUDGE_CHECKS row; verdict None with no error means the judge omitted the check."""
    if error is not None:
        result, passed, omitted, reason = "error", None, False, None
    elif verdict is None:
        result, passed, omitted, reason = "fail", False, True, "omitted by the judge: counted as failed"
    else:
        result, omitted, reason = verdict["result"], False, verdict.get("reason")
        passed = result == "success"
    return {
        "run_id": run_id,
        "attempt": attempt,
        "category": category,
        "check_id": check["check_id"],
        "check_type": check.get("check_type"),
        "result": result,
        "passed": passed,
        "omitted": omitted,
        "reason": reason,
        "error": error,
        "judge_model": provenance.get("judge_model"),
        "prompt_version": provenance.get("prompt_version"),
        "input_hash": provenance.get("input_hash"),
        "cached": provenance.get("cached"),
    }


def checklist_metrics(rows: list[dict]) -> dict:
    """CSR and ISR over JUDGE_CHECKS rows of one run; both null when a check errored or
    there is no check."""
    n = len(rows)
    passed = sum(1 for r in rows if r["passed"])
    errors = sum(1 for r in rows if r["result"] == "error")
    known = n > 0 and errors == 0
    return {
        "n_checks": n,
        "n_passed": passed,
        "n_omitted": sum(1 for r in rows if r["omitted"]),
        "n_check_errors": errors,
        "csr": passed / n if known else None,
        "isr": float(passed == n) if known else None,
    }


def rubric_scores(answer: dict, weights: dict[str, float]) -> tuple[list[dict], float]:
    rubric = [
        {
            "criterion": name,
            "score": answer[name]["score"],
            "reward": (answer[name]["score"] - SCORES[0]) / (SCORES[-1] - SCORES[0]),
            "weight": float(weights.get(name, 0.0)),
            "reason": answer[name]["reason"],
        }
        for name in RUBRIC
    ]
    total = sum(r["weight"] for r in rubric)
    return rubric, sum(r["weight"] * r["reward"] for r in rubric) / total


@dataclass
class JudgeOutput:
    checks: pa.Table
    steps: pa.Table
    summary: pa.Table
    usage: JudgeUsage = field(default_factory=JudgeUsage)


def judge_partition(
    conversations: list[dict],
    task: dict,
    outcomes: dict[str, dict | None],
    judge: Judge,
    headers: dict[str, str] | None = None,
) -> JudgeOutput:
    """Judge every run of one (model, instance) partition; outcomes by run_id."""
    plans = plan_partition(conversations, task, outcomes, judge.config)
    results, usage = judge.judge([r for plan in plans for r in plan.requests], headers)
    answers = iter(results)
    provenance = {"judge_model": judge.config.model, "prompt_version": judge.config.prompt_version}
    check_rows, step_rows, summary = [], [], []
    for plan in plans:
        run, run_checks, rewards, step_errors = plan.run, [], [], 0
        for request, checks in plan.checklist:
            result = next(answers)
            run_checks += [
                check_row(
                    run.run_id,
                    run.attempt,
                    category,
                    check,
                    result.verdicts.get(check["check_id"]),
                    result.errors.get(check["check_id"]),
                    input_hash=request.input_hash,
                    cached=result.cached,
                    **provenance,
                )
                for category, check in checks
            ]
        for request, steps in plan.steps:
            result = next(answers)
            for step in steps:
                verdict, error = result.verdicts.get(step_id(step)), result.errors.get(step_id(step))
                rubric, reward = (
                    (None, None) if error is not None else rubric_scores(verdict, judge.config.rubric_weights)
                )
                step_errors += error is not None
                if reward is not None:
                    rewards.append(reward)
                step_rows.append(
                    {
                        "run_id": run.run_id,
                        "attempt": run.attempt,
                        "conversation_id": step.conversation_id,
                        "step_index": step.index,
                        "message_index": step.message_index,
                        "rubric": rubric,
                        "step_reward": reward,
                        "error": error,
                        "input_hash": request.input_hash,
                        "cached": result.cached,
                        **provenance,
                    }
                )
        check_rows += run_checks
        summary.append(
            {
                "run_id": run.run_id,
                "attempt": run.attempt,
                **checklist_metrics(run_checks),
                "n_steps": len(run.steps),
                "n_step_errors": step_errors,
                "mean_step_reward": sum(rewards) / len(rewards) if rewards else None,
                **provenance,
            }
        )
    usage.runs, usage.items = len(plans), len(check_rows) + len(step_rows)
    usage.errors = sum(r["error"] is not None for r in check_rows + step_rows)
    return JudgeOutput(
        pa.Table.from_pylist(check_rows, schema=JUDGE_CHECKS.schema),
        pa.Table.from_pylist(step_rows, schema=JUDGE_STEPS.schema),
        pa.Table.from_pylist(summary, schema=JUDGE_SUMMARY.schema),
        usage,
    )


def default_cache(store_root: str | os.PathLike) -> JudgeCache:
    return JudgeCache(Path(store_root) / "cache" / "judge")
