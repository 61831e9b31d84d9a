"""The conformance suite's OpenAI chat clients (Kilo, Droid, mini-swe-agent) on an `openai/` route.

The same demo task of two user queries as Claude Code's script, done with each client's
shell tool and paths relative to the workspace (the local backend's workspace is a new
temporary directory each run, so a replay could not follow an absolute path): a `cat`, a
fix, a test run, an answer; then the navigation properties, a test run, an answer.
mini-swe-agent answers every turn with a tool call (submitting ends a query); its script
also has one text-only reply, which mini drops from its history (it asks again with a
format error), so that reply is an `edit` conversation of its own.

`chat_messages` reads OpenAI chat messages the way the merge README says they are kept,
independently of the merge, for the field-by-field comparison with what the upstream got.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from trajhub_assets.recording.scripted_upstream import Reply, say, text_block, tool_use_block

QUERY_ONE, QUERY_TWO = "/orders endpoint", "Thanks. The frontend"
ANSWER_ONE = "Fixed: page 1 now starts at offset 0 and a partial last page is counted."
ANSWER_TWO = "Added has_next and has_previous to Page."
TITLE = "Fix pagination"
# The tool each client runs shell commands with.
SHELL_TOOL = {"kilo-dev": "bash", "droid": "Execute", "mini-swe-agent": "bash"}
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"  # mini-swe-agent: ends a query
# mini-swe-agent's answer to a reply without a tool call (its format_error_template).
FORMAT_ERROR = "No tool calls found in the response"
DROPPED_REPLY = "The offset uses the 1-based page as a 0-based one, and the page count floors."

CAT = "cat pager/paginate.py"
FIX = (
    "sed -i -e 's|total_pages = total_items // per_page|total_pages = -(-total_items // per_page)|' "
    "-e 's|start = page \\* per_page|start = (page - 1) * per_page|' pager/paginate.py"
)
NAVIGATION = r"""python3 - <<'EOF'
from pathlib import Path
source = Path("pager/paginate.py")
source.write_text(source.read_text().replace("    total_pages: int\n", '''    total_pages: int

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.total_pages
''', 1))
Path("tests/test_navigation.py").write_text('''import unittest

from pager import paginate


class NavigationTest(unittest.TestCase):
    def test_first_middle_last_and_single_page(self):
        items = list(range(25))
        self.assertEqual((paginate(items, 1).has_previous, paginate(items, 1).has_next), (False, True))
        self.assertEqual((paginate(items, 2).has_previous, paginate(items, 2).has_next), (True, True))
        self.assertEqual((paginate(items, 3).has_previous, paginate(items, 3).has_next), (True, False))
        self.assertEqual((paginate([1], 1).has_previous, paginate([1], 1).has_next), (False, False))


if __name__ == "__main__":
    unittest.main()
''')
EOF"""
TESTS = "python3 -m unittest discover -s tests -v"


@dataclass(frozen=True)
class Shell:
    call_id: str
    command: str
    text: str = ""  # said before the call


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class TextOnly:
    """A reply without a tool call where the client expects one (mini-swe-agent drops it)."""

    text: str


def chat_turns(scaffold: str) -> dict[str, list]:
    first = [
        Shell("call_cat_1", CAT, "Let me look at paginate()."),
        Shell("call_fix_1", FIX),
        Shell("call_test_1", TESTS),
        Answer(ANSWER_ONE),
    ]
    if scaffold == "mini-swe-agent":
        first.insert(1, TextOnly(DROPPED_REPLY))
    return {
        "query 1": first,
        "query 2": [Shell("call_nav_2", NAVIGATION), Shell("call_test_2", TESTS), Answer(ANSWER_TWO)],
    }


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def _shell_arguments(request: dict, tool: str, command: str) -> dict:
    """`command`, and a sentence for any other required string argument of the client's tool
    (Droid's `summary` must be sentence-cased, 3 to 8 words)."""
    for spec in request.get("tools") or []:
        spec = spec.get("function") or spec
        if spec["name"] == tool:
            schema = spec.get("parameters") or {}
            required = [
                key
                for key in schema.get("required", [])
                if schema.get("properties", {}).get(key, {}).get("type") == "string"
            ]
            return {key: "Run the next shell step" for key in required} | {"command": command}
    raise AssertionError(f"the client offered no tool {tool!r}")


def chat_model(scaffold: str):
    """The upstream's policy for an OpenAI chat client: each query (found by its user message)
    gets its next step; a step is an assistant message after it or mini's format error."""
    turns, tool = chat_turns(scaffold), SHELL_TOOL[scaffold]

    def policy(request):
        if not request.body.get("tools"):  # a title or summary call, not the agent's turn
            return say(TITLE)
        messages = request.body["messages"]
        markers = {QUERY_ONE: "query 1", QUERY_TWO: "query 2"}
        index, lane = max(
            (i, lane)
            for i, m in enumerate(messages)
            if m["role"] == "user"
            for marker, lane in markers.items()
            if marker in _text(m["content"])
        )
        step = sum(
            m["role"] == "assistant" or (m["role"] == "user" and FORMAT_ERROR in _text(m["content"]))
            for m in messages[index + 1 :]
        )
        spec = turns[lane][min(step, len(turns[lane]) - 1)]
        if isinstance(spec, Shell):
            call = tool_use_block(spec.call_id, tool, _shell_arguments(request.body, tool, spec.command))
            return Reply(([text_block(spec.text)] if spec.text else []) + [call])
        if isinstance(spec, Answer) and scaffold == "mini-swe-agent":  # every turn is a tool call
            return Reply(
                [text_block(spec.text), tool_use_block(f"call_submit_{lane[-1]}", "bash", {"command": SUBMIT})]
            )
        return say(spec.text)

    return policy


# -- the wire, read independently of the merge ------------------------------------------------
SECTION = "\n\n"
SKIPPED = {"cache_control"}


def _leftovers(item: dict, known: set, prefix: str, extra: dict) -> None:
    for key, value in item.items():
        if key not in known and key not in SKIPPED and value not in (None, [], {}):
            extra[prefix + key] = value


def _message(role: str, content, **fields) -> dict:
    return {
        "role": role,
        "content": content,
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "is_error": None,
        "content_parts": None,
        "thinking_blocks": None,
        "extra": None,
    } | fields


def _content(content, separator: str, extra: dict) -> tuple[str | None, list | None]:
    """Text blocks concatenated; their parts kept when there are several."""
    if content is None or isinstance(content, str):
        return content, None
    for i, block in enumerate(content):
        assert block["type"] == "text", f"a {block['type']} block: extend this reading of the wire"
        _leftovers(block, {"type", "text"}, f"content[{i}].", extra)
    parts = [{"type": "text", "text": b["text"], "media_type": None, "ref": None} for b in content]
    return separator.join(b["text"] for b in content), parts if len(parts) > 1 else None


def chat_message(m: dict, names: dict) -> dict:
    extra: dict = {}
    role = m["role"]
    text, parts = _content(m.get("content"), SECTION if role == "system" else "", extra)
    if role in ("system", "user"):
        _leftovers(m, {"role", "content", "name"}, "", extra)
        return _message(role, text, name=m.get("name"), content_parts=parts, extra=extra or None)
    if role == "tool":
        _leftovers(m, {"role", "content", "name", "tool_call_id"}, "", extra)
        return _message(
            "tool",
            text,
            tool_call_id=m["tool_call_id"],
            name=m.get("name") or names.get(m["tool_call_id"]),
            content_parts=parts,
            extra=extra or None,
        )
    assert role == "assistant", m
    calls = []
    for j, call in enumerate(m.get("tool_calls") or []):
        names[call["id"]] = call["function"]["name"]
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "name": call["function"]["name"],
                "arguments": json.loads(call["function"]["arguments"]),
            }
        )
        _leftovers(call, {"id", "type", "function"}, f"tool_calls[{j}].", extra)
        _leftovers(call["function"], {"name", "arguments"}, f"tool_calls[{j}].function.", extra)
    _leftovers(m, {"role", "content", "name", "tool_calls", "reasoning_content"}, "", extra)
    return _message(
        "assistant",
        text,
        tool_calls=calls or None,
        name=m.get("name"),
        reasoning_content=m.get("reasoning_content"),
        content_parts=parts,
        extra=extra or None,
    )


def chat_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages as the merge README says they are kept."""
    names: dict = {}
    return [chat_message(m, names) for m in messages]


def chat_answer(body: dict) -> dict:
    """A completion's message, as kept."""
    return chat_message({**body["choices"][0]["message"], "role": "assistant"}, {})
