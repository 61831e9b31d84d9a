"""Progress of a long step, in the Dagster log (which the `trajhub` CLI prints as it goes):
items done out of the total, the LLM tokens and dollars spent so far, and an estimate of the
time left. Safe to call from the worker threads of a step.

A line at most every `every_s` seconds, and always for the last item: each line is an event
Dagster stores, and one per item of a batch of fast items cost more than the items."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from trajhub_assets.recording.raw_calls import read_run


class Progress:
    def __init__(self, log, total: int, unit: str, every_s: float = 5.0):
        self.log, self.total, self.unit, self.every_s = log, total, unit, every_s
        self.done = 0
        self.totals: Counter = Counter()
        self._started = self._logged = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, what: str = "", **amounts: float) -> None:
        """One more item done; `amounts` (tokens_in, tokens_out, cost_usd, failed, ...) add up."""
        with self._lock:
            self.done += 1
            self.totals.update({k: v for k, v in amounts.items() if v})
            now = time.monotonic()
            if self.done < self.total and now - self._logged < self.every_s:
                return
            self._logged, elapsed = now, now - self._started
            left = elapsed / self.done * (self.total - self.done)
            self.log.info(
                "progress: %d/%d %s done%s | %s | %.0fs elapsed, ~%.0fs left",
                self.done,
                self.total,
                self.unit,
                f" ({what})" if what else "",
                self.summary(),
                elapsed,
                left,
            )

    def summary(self) -> str:
        """Tokens and cost, when the step spends any (merging does not), then the other counts."""
        t = self.totals
        parts = [f"{k} {int(v)}" for k, v in sorted(t.items()) if k not in ("tokens_in", "tokens_out", "cost_usd")]
        if t["tokens_in"] or t["tokens_out"] or t["cost_usd"]:
            spent = f"tokens {int(t['tokens_in']):,} in / {int(t['tokens_out']):,} out, cost ${t['cost_usd']:.4f}"
            parts.insert(0, spent)
        return ", ".join(parts) or "nothing counted"


def recording_usage(path: Path) -> dict[str, float]:
    """Tokens and cost of the calls in one recordings file (none if it does not exist)."""
    usage = Counter()
    if path.exists():
        for record in read_run(path).records:
            tokens = record.get("usage") or {}
            usage.update(
                tokens_in=tokens.get("input_tokens") or 0,
                tokens_out=tokens.get("output_tokens") or 0,
                cost_usd=record.get("cost_usd") or 0.0,
                calls=1,
            )
    return dict(usage)


def fail_if_all_failed(what: str, total: int, failed: int, first: str) -> None:
    """Fail the step when every one of its `total` items failed (`first`: the first failure).

    A partial failure is data, counted in the metadata; a stage where nothing worked is not
    a success, and the stages that follow would only cut an empty release.
    """
    from dagster import Failure, MetadataValue

    if total and failed == total:
        raise Failure(
            description=f"all {total} {what} failed; the first: {first}",
            metadata={"failed": total, "first_failure": MetadataValue.text(first)},
            allow_retries=False,
        )
