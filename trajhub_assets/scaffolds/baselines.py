"""Baseline policies: scripted stand-ins for a model, so the demo runs with no API key.

They are not language models. The scripted upstream server answers chat requests for
`trajhub-baseline/<name>` by asking a policy for the next assistant message, given the
conversation so far. A policy recognizes the task by its first user query and acts with
the builtin agent's tools:

- careful: looks around, reads every file it will change, runs the tests, writes the
  reference fix, runs the tests again, and finishes with a summary.
- hasty: lists the directory twice, overwrites one file it never read with part of the
  fix, skips the tests, and finishes without a summary.
- explorer: stochastic. At each step it draws one of the actions that are plausible in the
  state the conversation shows (look around, read a file of the fix, run the tests, write
  the whole fix, write part of it, finish), from a generator seeded by the request's `seed`
  and the step: the same seed and history give the same action, other seeds other runs,
  some of which fix the task and some not. Branches of one run (trajhub branch) differ
  through it.

The difference is deliberate: rewards and preference pairs need something real to separate.

`judge` is a baseline judge for the demo, equally scripted: it reads the judge's prompt (a
run's checklist, or its steps listed by id over one transcript) and answers each check and
each step on its own, whatever else the request asks, from surface evidence (a tool call
repeated verbatim, a tool error, a write to a file never mentioned before, tests never run,
an empty summary). Its verdicts are placeholders that exercise the judge pipeline end to
end, not judgements.
"""

from __future__ import annotations

import functools
import json
import random
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

POLICIES = ("careful", "hasty", "explorer")
EXPLORER_MAX_STEPS = 10  # then it finishes, whatever it drew
JUDGE = "judge"
ROUTE_PREFIX = "trajhub-baseline/"  # the proxy's route to the scripted upstream
ROUTES = (ROUTE_PREFIX, "baseline/")  # the bundled proxy config routes both to it


def uses_baselines(config) -> bool:
    """Whether a project (ProjectConfig) runs a baseline or judges with the baseline judge: the
    demo environment, whose proxy serves them (definitions.py)."""
    return any(model.route.startswith(ROUTES) for model in config.models) or config.judge.model.startswith(ROUTES)


@functools.lru_cache(maxsize=64)
def reference_fix(workspace_source: str, reference_patch: str) -> tuple[tuple[str, str], ...]:
    """(path, new content) of every file the reference patch creates or changes."""
    patch = Path(reference_patch).read_text()
    paths = list(dict.fromkeys(re.findall(r"^\+\+\+ b/(.+)$", patch, flags=re.M)))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(workspace_source, tmp, dirs_exist_ok=True)
        subprocess.run(["git", "apply", reference_patch], cwd=tmp, check=True, capture_output=True)
        return tuple((path, (Path(tmp) / path).read_text()) for path in paths)


def _text(content) -> str:
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _call(name: str, **arguments) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


class BaselinePolicies:
    def __init__(self, tasks: list[dict]):
        self.tasks = {task["user_query"][0]: task for task in tasks}

    def respond(self, policy: str, request: dict) -> dict:
        """The next assistant message (OpenAI chat shape) for an OpenAI chat request."""
        if policy not in POLICIES:
            raise ValueError(f"unknown baseline policy {policy!r}; known: {POLICIES}")
        messages = request.get("messages", [])
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        task = self.tasks.get(_text(messages[users[0]]["content"])) if users else None
        if task is None:
            return {"role": "assistant", "content": "baseline: this is not a known task."}
        turn = len(users) - 1
        step = sum(m.get("role") == "assistant" for m in messages[users[-1] :])
        if policy == "explorer":
            return {"role": "assistant", "content": None, "tool_calls": [self._explorer(task, messages, request)]}
        plan = getattr(self, f"_{policy}")(task, turn)
        if step >= len(plan):
            return {"role": "assistant", "content": "Done."}
        return {"role": "assistant", "content": None, "tool_calls": [plan[step]]}

    def _careful(self, task: dict, turn: int) -> list[dict]:
        tests = task.get("test_command") or "ls"
        if turn > 0:  # later queries: the fix already covers them; check and report
            return [
                _call("shell", command=tests),
                _call("finish", summary="Checked the request against the change; tests pass."),
            ]
        fix = reference_fix(task["workspace_source"], task["reference_patch"])
        source = Path(task["workspace_source"])
        return (
            [_call("shell", command="ls -R")]
            + [_call("read_file", path=path) for path, _ in fix if (source / path).exists()]
            + [_call("shell", command=tests)]
            + [_call("write_file", path=path, content=content) for path, content in fix]
            + [
                _call("shell", command=tests),
                _call("finish", summary=f"Fixed the issue in {', '.join(p for p, _ in fix)}; the test suite passes."),
            ]
        )

    def _hasty(self, task: dict, turn: int) -> list[dict]:
        if turn > 0:
            return [_call("finish", summary="")]
        fix = reference_fix(task["workspace_source"], task["reference_patch"])
        # the first source file of the fix: often enough to pass, never checked
        path, content = next(((p, c) for p, c in fix if p.endswith(".py") and not p.startswith("tests")), fix[0])
        return [
            _call("shell", command="ls"),
            _call("shell", command="ls"),
            _call("write_file", path=path, content=content),
            _call("finish", summary=""),
        ]

    def _explorer(self, task: dict, messages: list[dict], request: dict) -> dict:
        """One draw among the actions plausible after what `messages` shows it has done."""
        done = [
            (call["function"]["name"], json.loads(call["function"]["arguments"]))
            for m in messages
            if m.get("role") == "assistant"
            for call in m.get("tool_calls") or []
        ]
        if len(done) >= EXPLORER_MAX_STEPS:
            return _call("finish", summary="Stopping here.")
        tests = task.get("test_command") or "ls"
        fix = reference_fix(task["workspace_source"], task["reference_patch"])
        source = Path(task["workspace_source"])
        unread = [p for p, _ in fix if (source / p).exists() and ("read_file", {"path": p}) not in done]
        written = [i for i, (name, _) in enumerate(done) if name == "write_file"]
        unwritten = [(p, c) for p, c in fix if ("write_file", {"path": p, "content": c}) not in done]
        tested = bool(written) and ("shell", {"command": tests}) in done[written[-1] :]
        # (weight, tool call): what a model might do next in this state
        options = [(1, ("shell", {"command": "ls -R"})), (2, ("shell", {"command": tests}))]
        if unread:
            options.append((3, ("read_file", {"path": unread[0]})))
        if unwritten:
            path, content = unwritten[0]
            options.append((3, ("write_file", {"path": path, "content": content})))
            # part of the change: the first line that differs from the file as it is, dropped
            half_done = _without_first_change(source / path, content)
            options.append((2, ("write_file", {"path": path, "content": half_done})))
        if written or len(done) >= 3:  # giving up early is plausible too, if rarely
            options.append((4 if tested else 2, ("finish", {"summary": "Made the change; see the test output."})))
        rng = random.Random(f"{request.get('seed', 0)}:{len(done)}")
        ((name, arguments),) = rng.choices([o for _, o in options], weights=[w for w, _ in options])
        return _call(name, **arguments)


def _without_first_change(path: Path, content: str) -> str:
    """`content` with its first line that the file at `path` lacks removed: a fix left half done."""
    before = set(path.read_text().splitlines()) if path.exists() else set()
    lines = content.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.rstrip("\n") not in before), None)
    return content if first is None else "".join(lines[:first] + lines[first + 1 :])


def _section(prompt: str, title: str, until: str) -> str:
    """The text of a judge prompt's `## title` section, up to its `## until` heading: the
    last one, since the messages of a transcript may hold `## ` lines of their own."""
    start, end = prompt.find(f"## {title}"), prompt.rfind(f"\n## {until}")
    return "" if start < 0 else prompt[start : end if end > start else None]


def _step_scores(step: str, before: str) -> dict[str, int]:
    """The rubric scores of one step (its message and results) given the transcript before it."""
    calls = re.findall(r"^-> call (\w+) \(id [^)]*\): (.*)$", step, flags=re.M)
    repeated = any(f"-> call {name} " in before and arguments in before for name, arguments in calls)
    errored = "ERROR" in step
    parsed = []
    for name, arguments in calls:
        try:  # long arguments reach the judge shortened (a truncation marker): no JSON left to read
            value = json.loads(arguments)
        except ValueError:
            continue
        if isinstance(value, dict):
            parsed.append((name, value))
    blind_write = any(
        name in ("write_file", "edit_file") and value.get("path", "") not in before for name, value in parsed
    )
    empty_finish = any(name == "finish" and not value.get("summary") for name, value in parsed)
    return {
        "goal_progress": 1 if empty_finish else 4,
        "tool_choice": 2 if blind_write else 4,
        "argument_correctness": 2 if errored else 4,
        "use_of_information": 2 if blind_write or repeated else 4,
        "non_redundancy": 1 if repeated else 5,
    }


def _graded_step(trajectory: str, conversation_id: str, message_index: int) -> tuple[str, str]:
    """(the step: its message and the tool results answering it, the transcript before it)
    from the judge prompt's trajectory, the way a per-step prompt would show them."""
    start = trajectory.find(f"=== conversation {conversation_id} (")
    end = trajectory.find("\n=== conversation ", start + 1)
    shown = trajectory[start : end if end >= 0 else None].split("\n", 1)[1]  # after the header line
    blocks = re.split(r"\n\n(?=\[\d+\] )", shown)
    position = next(i for i, b in enumerate(blocks) if b.startswith(f"[{message_index}] assistant"))
    message = blocks[position]
    call_ids = set(re.findall(r"^-> call \w+ \(id ([^)]*)\):", message, flags=re.M))
    results = [
        b
        for b in blocks[position + 1 :]
        if (answers := re.match(r"\[\d+\] tool .*\(answers ([^)]*)\)", b)) and answers.group(1) in call_ids
    ]
    return "\n\n".join([message, *results]), "\n\n".join(blocks[:position])


def judge_answer(request: dict) -> dict:
    """A schema-valid answer to a checklist or steps request of the judge: for each check or
    step, what it answers whichever other items share the request."""
    schema = request["response_format"]["json_schema"]["schema"]
    prompt = _text(request["messages"][-1]["content"])
    if "checks" in schema["properties"]:
        trajectory = _section(prompt, "Trajectory", "Outcome after the run")
        tests_run = "unittest" in trajectory or "pytest" in trajectory
        ids = schema["properties"]["checks"]["items"]["properties"]["check_id"]["enum"]
        types = dict(re.findall(r"^- (\S+) \[(\w+)\]", prompt, flags=re.M))
        checks = [
            {
                "check_id": i,
                "result": "fail" if types.get(i) == "testing" and not tests_run else "success",
                "reason": "baseline judge: "
                + (
                    "no test run in the trajectory"
                    if types.get(i) == "testing" and not tests_run
                    else "no evidence against it"
                ),
            }
            for i in ids
        ]
        return {"checks": checks}
    item = schema["properties"]["steps"]["items"]
    # The original prompt (a repair's is the last message): the trajectory and the steps listed.
    original = _text(next(m["content"] for m in request["messages"] if m.get("role") == "user"))
    trajectory = _section(original, "Trajectory", "The steps to grade")
    listed = {
        sid: (conversation, int(index))
        for sid, index, conversation in re.findall(
            r"^- step (\S+): message \[(\d+)\] of conversation (.+)$",
            original[original.rfind("\n## The steps to grade") :],
            flags=re.M,
        )
    }
    steps = []
    for sid in item["properties"]["step_id"]["enum"]:
        scores = _step_scores(*_graded_step(trajectory, *listed[sid]))
        steps.append(
            {"step_id": sid}
            | {
                name: {"score": scores.get(name, 3), "reason": "baseline judge: surface evidence only"}
                for name in item["properties"]
                if name != "step_id"
            }
        )
    return {"steps": steps}


def upstream_policy(policies: BaselinePolicies):
    """The scripted upstream's policy for every `trajhub-baseline/<name>` route."""
    from trajhub_assets.recording.scripted_upstream import Fail, reply_from_openai, say

    def respond(request):
        name = str(request.body.get("model", "")).removeprefix(ROUTE_PREFIX)
        if name == JUDGE:
            return say(json.dumps(judge_answer(request.body)))
        if name not in POLICIES:
            return Fail(404, f"no baseline named {name!r}; known: {POLICIES + (JUDGE,)}")
        return reply_from_openai(policies.respond(name, request.body))

    return respond
