"""judge_rewards: an LLM judge, through the `openai` client, over a partition's runs.

Two kinds of judge items per run:
- checklist: one call per checklist category of the task (OctoCodingBench style). The judge
  answers each check success/fail with a reason. A check it leaves out counts as failed
  (`omitted`), never ignored. CSR = share of checks passed, ISR = 1 when all pass.
- step: one call per scored step (steps as in rewards.rules: generated assistant messages,
  indexed per conversation). The rubric scores goal progress, tool choice, argument
  correctness, use of earlier information and non-redundancy 1..5, each with a reason;
  r_i = (score - 1) / 4 and step_reward = Σ w_i·r_i / Σ w_i with the config's weights
  (the plain weighted sum when they add up to 1).

Answers are structured output (response_format json_schema) validated with jsonschema
against the very schema sent. A malformed answer is asked again (judge.max_retries times)
with the problem named; when retries run out the item is a judge error: its rows carry
the error and null scores, never a silent 0. A run with an errored check has null CSR/ISR;
its mean step reward is over the steps judged, with n_step_errors beside it. Transport errors
(rate limits, timeouts, 5xx) are retried with backoff by the openai client itself
(max_retries, timeout_s); when they persist the item is an error too, and never the
whole partition.

Cache: one JSON file per item under <store root>/cache/judge/, named by
sha256(judge model, prompt version, input hash), where the input hash covers the exact
messages and schema sent. Files are written to a temporary name and renamed, so parallel
processes never see half an entry (two processes judging the same item at once both pay
for it and the last rename wins). Answers and malformed-answer errors are cached, so
re-materializing a partition makes zero calls; transport errors are not (the endpoint
failed, not the judge), and `retry_errors=True` re-asks items cached as errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
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

STEP_SYSTEM = """You grade one step of a coding agent's trajectory: one assistant message and
the results of the tools it called, given the trajectory before it. Score each criterion
with an integer from 1 (bad) to 5 (excellent) and a one-sentence reason:
{criteria}
Long texts were shortened; a "[... N characters truncated ...]" marker shows where.
Reply with JSON only: {{{shape}}}"""

REPAIR = "Your answer could not be used: {problem}. Reply again with only the JSON object the schema asks for."


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


def checklist_schema(check_ids: list[str]) -> dict:
    verdict = {
        "type": "object",
        "additionalProperties": False,
        "required": ["check_id", "result", "reason"],
        "properties": {
            "check_id": {"type": "string", "enum": check_ids},
            "result": {"type": "string", "enum": ["success", "fail"]},
            "reason": {"type": "string"},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["checks"],
        "properties": {"checks": {"type": "array", "items": verdict}},
    }


STEP_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": list(RUBRIC),
    "properties": {
        name: {
            "type": "object",
            "additionalProperties": False,
            "required": ["score", "reason"],
            "properties": {"score": {"type": "integer", "enum": list(SCORES)}, "reason": {"type": "string"}},
        }
        for name in RUBRIC
    },
}


@dataclass(frozen=True)
class JudgeItem:
    label: str  # for logs: "<run> checklist SP", "<run> <conversation> step 3"
    kind: str  # "checklist" | "step"
    messages: tuple[dict, ...]
    schema: dict

    @cached_property  # prompts are long: hash each once
    def input_hash(self) -> str:
        payload = {"messages": self.messages, "schema": self.schema, "temperature": TEMPERATURE}
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ).hexdigest()


def checklist_items(run: Run, conversations: list[dict], task: dict, outcome: dict | None) -> list[tuple]:
    """(category, checks, item) per non-empty category of the task's checklist."""
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
    items = []
    for category, group in (task.get("checklist") or {}).items():
        checks = group.get("checks") or []
        if not checks:
            continue
        listed = "\n".join(f"- {c['check_id']} [{c.get('check_type')}]: {c['description']}" for c in checks)
        prompt = (
            f"## The user's request\n{truncate(user_request(task), LIMITS['user'])}\n\n"
            f"## Checks of category {category!r}\n{truncate(group.get('description') or '', 3000)}\n\n"
            f"{listed}\n\n## Trajectory\n{transcript}\n\n## Outcome after the run\n{_outcome_text(outcome)}"
        )
        item = JudgeItem(
            f"{run.run_id} checklist {category}",
            "checklist",
            ({"role": "system", "content": CHECKLIST_SYSTEM}, {"role": "user", "content": prompt}),
            checklist_schema([c["check_id"] for c in checks]),
        )
        items.append((category, checks, item))
    return items


def step_items(run: Run, conversations: list[dict], task: dict) -> list[tuple[Step, JudgeItem]]:
    by_id = {c["meta"]["conversation_id"]: c for c in conversations}
    criteria = "\n".join(f"- {name}: {question}" for name, question in RUBRIC.items())
    shape = ", ".join(f'"{name}": {{"score": 1-5, "reason": "..."}}' for name in RUBRIC)
    system = STEP_SYSTEM.format(criteria=criteria, shape=shape)
    items = []
    for step in run.steps:
        messages = by_id[step.conversation_id]["messages"]
        before = render_transcript([render_message(i, m) for i, m in enumerate(messages[: step.message_index])])
        answered = [
            render_message(i, m)
            for i, m in enumerate(messages)
            if i > step.message_index and any(m is r for r in step.results.values())
        ]
        judged = "\n\n".join([render_message(step.message_index, step.message)] + answered)
        prompt = (
            f"## The user's request\n{truncate(user_request(task), LIMITS['user'])}\n\n"
            f"## Trajectory before the step\n{before}\n\n"
            f"## The step to grade (step {step.index} of conversation {step.conversation_id})\n{judged}"
        )
        items.append(
            (
                step,
                JudgeItem(
                    f"{run.run_id} {step.conversation_id} step {step.index}",
                    "step",
                    ({"role": "system", "content": system}, {"role": "user", "content": prompt}),
                    STEP_SCHEMA,
                ),
            )
        )
    return items


# -- answers -----------------------------------------------------------------------------
class _MalformedAnswer(ValueError):
    """The judge's answer does not fit the schema; an item's failure, handled as data."""


def parse_answer(content: str | None, item: JudgeItem) -> dict:
    text = (content or "").strip()
    if text.startswith("```"):  # a fenced block, as many models write even when asked not to
        text = text.strip("`").removeprefix("json").strip()
    if not text:
        raise _MalformedAnswer("the answer is empty")
    try:
        answer = json.loads(text)
    except ValueError as error:
        raise _MalformedAnswer(f"not JSON ({error})") from None
    problem = next(iter(jsonschema.Draft202012Validator(item.schema).iter_errors(answer)), None)
    if problem is not None:
        where = "/".join(map(str, problem.absolute_path)) or "(root)"
        raise _MalformedAnswer(f"at {where}: {problem.message}")
    if item.kind == "checklist":
        ids = [v["check_id"] for v in answer["checks"]]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise _MalformedAnswer(f"checks answered more than once: {twice}")
    return answer


# -- cache -------------------------------------------------------------------------------
class JudgeCache:
    """One JSON file per judged item; see the module docstring."""

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


def cache_key(model: str, prompt_version: str, input_hash: str) -> str:
    return hashlib.sha256(f"{model}\0{prompt_version}\0{input_hash}".encode()).hexdigest()


# -- the judge ---------------------------------------------------------------------------
@dataclass
class JudgeResult:
    answer: dict | None = None
    error: str | None = None
    cached: bool = False
    cacheable: bool = True  # False for transport errors: the next run asks again
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class JudgeUsage:
    """Totals for one partition, for the asset's metadata."""

    items: int = 0
    cache_hits: int = 0
    requests: int = 0  # HTTP requests sent, retries included (counted by an httpx hook)
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls_without_cost: int = 0  # answers whose price the endpoint did not report

    def metadata(self) -> dict:
        return {f"judge_{k}": v for k, v in asdict(self).items()}

    def __add__(self, other: JudgeUsage) -> JudgeUsage:  # totals over a batch of partitions
        return JudgeUsage(**{k: v + getattr(other, k) for k, v in asdict(self).items()})


class Judge:
    """A judge model behind an OpenAI-compatible endpoint, with a cache and a thread pool."""

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgeCache,
        *,
        proxy_url: str | None = None,
        proxy_key: str | None = None,
        extra_headers: dict[str, str] | None = None,
        retry_errors: bool = False,
    ):
        """The judge calls `config.base_url` with the key in `config.api_key_env`, else our
        proxy at `proxy_url` with `proxy_key`: the proxy's key never goes anywhere else."""
        unknown = set(config.rubric_weights) - set(RUBRIC)
        if unknown:
            raise ConfigError(f"judge.rubric_weights: unknown criteria {sorted(unknown)}; known: {list(RUBRIC)}")
        if config.base_url:
            url, api_key = config.base_url, None
            if config.api_key_env:
                api_key = os.environ.get(config.api_key_env)
                if not api_key:
                    raise ConfigError(f"judge.api_key_env: environment variable {config.api_key_env!r} is not set")
        elif proxy_url:
            url, api_key = proxy_url, proxy_key
        else:
            raise ConfigError("judge.base_url is not set and no proxy URL was given to route the judge through")
        self.config, self.cache = config, cache
        self.extra_headers = dict(extra_headers or {})
        self.retry_errors = retry_errors
        self._requests = 0
        self._lock = threading.Lock()
        self.client = openai.OpenAI(
            base_url=url,
            api_key=api_key or "no-key",  # a local endpoint or our proxy may need none
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]}),
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count_request(self, request) -> None:
        with self._lock:
            self._requests += 1

    def key(self, item: JudgeItem) -> str:
        return cache_key(self.config.model, self.config.prompt_version, item.input_hash)

    def judge(self, items: list[JudgeItem]) -> tuple[list[JudgeResult], JudgeUsage]:
        """Results in the order of `items`; identical items are asked once."""
        usage = JudgeUsage(items=len(items))
        started, requests_before = time.monotonic(), self._requests
        results: dict[str, JudgeResult] = {}
        todo: dict[str, JudgeItem] = {}
        for item in items:
            key = self.key(item)
            entry = self.cache.get(key)
            if entry is not None and (entry.get("answer") is not None or not self.retry_errors):
                results[key] = JudgeResult(
                    entry.get("answer"), entry.get("error"), cached=True, attempts=entry.get("attempts", 0)
                )
            else:
                todo.setdefault(key, item)
        with ThreadPoolExecutor(max_workers=self.config.max_concurrent, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._ask, item): (key, item) for key, item in todo.items()}
            for future in as_completed(futures):
                key, item = futures[future]
                result = results[key] = future.result()
                if result.cacheable:  # written as results arrive: a crash keeps what was paid for
                    self.cache.put(
                        key,
                        {
                            "judge_model": self.config.model,
                            "prompt_version": self.config.prompt_version,
                            "input_hash": item.input_hash,
                            "label": item.label,
                            "answer": result.answer,
                            "error": result.error,
                            "attempts": result.attempts,
                            "prompt_tokens": result.prompt_tokens,
                            "completion_tokens": result.completion_tokens,
                            "cost_usd": result.cost_usd,
                            "created_at": time.time(),
                        },
                    )
                usage.prompt_tokens += result.prompt_tokens
                usage.completion_tokens += result.completion_tokens
                if result.cost_usd is None:
                    usage.calls_without_cost += result.attempts
                else:
                    usage.cost_usd += result.cost_usd
        ordered = [results[self.key(item)] for item in items]
        usage.cache_hits = sum(r.cached for r in ordered)
        usage.errors = sum(r.error is not None for r in ordered)
        usage.requests = self._requests - requests_before
        log.info(
            "judge %s: %d items, %d from cache, %d requests, %d errors in %.1fs",
            self.config.model,
            usage.items,
            usage.cache_hits,
            usage.requests,
            usage.errors,
            time.monotonic() - started,
        )
        return ordered, usage

    def _ask(self, item: JudgeItem) -> JudgeResult:
        result = JudgeResult()
        messages = list(item.messages)
        problem = None
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": f"trajhub_{item.kind}", "schema": item.schema, "strict": True},
        }
        for _ in range(self.config.max_retries + 1):
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.config.model,
                    messages=messages,
                    response_format=response_format,
                    temperature=TEMPERATURE,
                    extra_headers=self.extra_headers or None,
                )
                completion = raw.parse()
            except openai.APIError as error:  # the client already retried what is worth retrying
                log.warning("judge %s: %s", item.label, error)
                result.error, result.cacheable = f"{type(error).__name__}: {error}", False
                return result
            result.attempts += 1
            if completion.usage is not None:
                result.prompt_tokens += completion.usage.prompt_tokens or 0
                result.completion_tokens += completion.usage.completion_tokens or 0
            cost = _float(raw.headers.get(COST_HEADER))
            if cost is not None:
                result.cost_usd = (result.cost_usd or 0.0) + cost
            content = completion.choices[0].message.content if completion.choices else None
            try:
                result.answer = parse_answer(content, item)
                return result
            except _MalformedAnswer as malformed:
                problem = str(malformed)
                log.warning("judge %s: malformed answer (attempt %d): %s", item.label, result.attempts, problem)
                messages = [
                    *item.messages,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": REPAIR.format(problem=problem)},
                ]
        result.error = f"malformed judge answer after {result.attempts} attempts: {problem}"
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
    conversations: list[dict], task: dict, outcomes: dict[str, dict | None], judge: Judge
) -> JudgeOutput:
    """Judge every run of one (model, instance) partition; outcomes by run_id."""
    plans = []
    for run_id, run_conversations in group_runs(conversations).items():
        run = build_run(run_conversations)
        plans.append(
            (
                run,
                checklist_items(run, run_conversations, task, outcomes.get(run_id)),
                step_items(run, run_conversations, task),
            )
        )
    items = [i for _, checks, steps in plans for i in [c[2] for c in checks] + [s[1] for s in steps]]
    results, usage = judge.judge(items)
    provenance = {"judge_model": judge.config.model, "prompt_version": judge.config.prompt_version}
    check_rows, step_rows, summary = [], [], []
    position = 0
    for run, categories, steps in plans:
        run_checks, rewards, step_errors = [], [], 0
        for category, checks, item in categories:
            result = results[position]
            position += 1
            verdicts = {v["check_id"]: v for v in (result.answer or {}).get("checks", [])}
            run_checks += [
                check_row(
                    run.run_id,
                    run.attempt,
                    category,
                    check,
                    verdicts.get(check["check_id"]),
                    result.error,
                    input_hash=item.input_hash,
                    cached=result.cached,
                    **provenance,
                )
                for check in checks
            ]
        for step, item in steps:
            result = results[position]
            position += 1
            rubric, reward = (
                (None, None) if result.answer is None else rubric_scores(result.answer, judge.config.rubric_weights)
            )
            step_errors += result.error is not None
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
                    "error": result.error,
                    "input_hash": item.input_hash,
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
                "n_steps": len(steps),
                "n_step_errors": step_errors,
                "mean_step_reward": sum(rewards) / len(rewards) if rewards else None,
                **provenance,
            }
        )
    return JudgeOutput(
        pa.Table.from_pylist(check_rows, schema=JUDGE_CHECKS.schema),
        pa.Table.from_pylist(step_rows, schema=JUDGE_STEPS.schema),
        pa.Table.from_pylist(summary, schema=JUDGE_SUMMARY.schema),
        usage,
    )


def default_cache(store_root: str | os.PathLike) -> JudgeCache:
    return JudgeCache(Path(store_root) / "cache" / "judge")
