"""What the Dagster UI shows of an instance's pairs: the first few, or why there are none.

Apart from pairs.py, whose code is preference_pairs' code version: how pairs are shown
decides none of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

PREVIEW_CHARS = 200
# What each skip counter of preference_pairs' stats means, for an instance left without pairs.
SKIP_REASONS = {
    "skipped_no_step": "runs without a step",
    "skipped_unrewarded": "runs without a reward",
    "skipped_tools_differ": "run pairs offered different tools",
    "skipped_tie": "run pairs with equal rewards",
    "skipped_below_margin": "run pairs whose reward gap is under min_margin",
    "skipped_same_actions": "run pairs that took the same actions",
    "skipped_step_unrewarded": "step candidates without a step reward",
    "skipped_step_duplicate": "duplicate step pairs",
}


def messages_text(messages: list[Mapping] | None) -> str:
    """Messages as a reader skims them: `role: text`, tool calls as `name(arguments)`."""
    lines = []
    for message in messages or []:
        calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or []]
        lines.append(f"{message['role']}: " + " ".join(filter(None, [message.get("content"), *calls])))
    return "\n".join(lines)


def preview_rows(table: pa.Table, limit: int = 5) -> list[dict]:
    """The first pairs of an instance: who was chosen over whom, by what margin, the end of
    the shared prompt and the start of the chosen and rejected text."""
    return [
        {
            "pair": f"{r['kind']}: {r['chosen_model']} #{r['chosen_attempt']} ({r['chosen_reward']:.3f}) over "
            f"{r['rejected_model']} #{r['rejected_attempt']} ({r['rejected_reward']:.3f})",
            "margin": round(r["margin"], 4),
            "prompt_tail": _tail(messages_text(r["prompt"]), PREVIEW_CHARS),
            "chosen_text": _head(messages_text(r["chosen"]), PREVIEW_CHARS),
            "rejected_text": _head(messages_text(r["rejected"]), PREVIEW_CHARS),
        }
        for r in table.slice(0, limit).to_pylist()
    ]


def no_pairs_reason(stats: Mapping[str, int]) -> str:
    """Why preference_pairs made no pair of an instance, from its stats."""
    runs = stats.get("trajectories", 0)
    if runs < 2:
        return f"no pairs: {runs} trajectory of this instance, a pair needs two runs"
    skipped = [f"{n} {SKIP_REASONS.get(key, key)}" for key, n in stats.items() if key.startswith("skipped_") and n]
    return f"no pairs from {runs} trajectories: " + ("; ".join(skipped) or "no candidate pair")


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[...] " + text[-limit:]
