"""Progress logs at most one line per interval, and always the last item's."""

import logging

from trajhub_assets.progress import Progress


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]


def test_fast_items_log_only_the_last(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("t"), 10, "partitions", every_s=3600)
    for _ in range(10):
        progress.advance(calls=3)
    assert len(lines(caplog)) == 1
    assert lines(caplog)[0].startswith("progress: 10/10 partitions done") and "calls 30" in lines(caplog)[0]


def test_slow_items_log_each(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("t"), 3, "runs", every_s=0)
    for _ in range(3):
        progress.advance()
    assert [line.split(" done")[0] for line in lines(caplog)] == [f"progress: {i}/3 runs" for i in (1, 2, 3)]


def test_a_step_that_spends_nothing_does_not_report_tokens_or_cost(caplog):
    caplog.set_level(logging.INFO)
    merged = Progress(logging.getLogger("t"), 1, "partitions")
    merged.advance(calls=6, conversations=2)
    judged = Progress(logging.getLogger("t"), 1, "partitions judged")
    judged.advance(tokens_in=640, tokens_out=320, judge_calls=2)
    merge_line, judge_line = lines(caplog)
    assert "calls 6, conversations 2" in merge_line and "tokens" not in merge_line and "cost" not in merge_line
    assert "tokens 640 in / 320 out, cost $0.0000, judge_calls 2" in judge_line
