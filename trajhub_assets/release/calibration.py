"""reward_calibration: do the rewards agree with people, and do people agree with each other?

Labelling sheet (`trajhub label export`): one row per pair to annotate, with the two responses
shown as A and B. Which side is the reward's chosen one is a fixed function of the pair id
(`sheet_side_a`), so annotators are blind to the reward and no key file is needed to read the
sheet back. Annotators fill `annotator`, `choice` (A, B or tie) and/or `score` (a number on any
scale, positive when A is better); each annotator fills their own copy.

Labels files (`trajhub label import`): CSV or JSONL rows with pair_id, annotator and choice or
score. `choice` may also be `chosen`/`rejected` (the reward's sides). On import everything is
turned to the reward's orientation: `preferred` in chosen/rejected/tie and `score` for chosen over
rejected. Rows with neither choice nor score are not labelled yet and are skipped.

Figures (`calibrate`):
- agreement: share of pairs whose human majority (strictly more votes than any other answer)
  prefers the reward's chosen side, among pairs with a majority for one side; Wilson interval.
- Pearson and Spearman correlation between the reward margin and the mean human score per pair
  (scores given as choices count +1/-1/0 when no number was given); Fisher-z intervals
  (Spearman with Fieller's 1.06 variance factor).
- inter-annotator agreement: Cohen's kappa when there are two annotators (pairs both labelled),
  Fleiss' kappa for more (pairs labelled by the most common number of annotators, since Fleiss
  needs the same count for every item).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from scipy import stats

from trajhub_assets.errors import RecordError
from trajhub_assets.release.schema import HUMAN_LABELS, REWARD_CALIBRATION

log = logging.getLogger(__name__)

PREFERENCES = ("chosen", "rejected", "tie")
SHEET_COLUMNS = (
    "pair_id",
    "kind",
    "instance_id",
    "prompt",
    "response_a",
    "response_b",
    "annotator",
    "choice",
    "score",
    "note",
)
_CHOICES = {"a": "A", "b": "B", "tie": "tie", "equal": "tie", "same": "tie", "chosen": "chosen", "rejected": "rejected"}
MESSAGE_CHARS = 2000


def sheet_side_a(pair_id: str) -> str:
    """Which reward side the sheet shows as A: fixed by the pair id, unknown to annotators."""
    return "chosen" if hashlib.sha256(pair_id.encode()).digest()[0] % 2 == 0 else "rejected"


# -- export ----------------------------------------------------------------------------------
def _clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more chars]"


def render_messages(messages: Iterable[Mapping]) -> str:
    """A plain transcript a person can read in a spreadsheet cell."""
    lines = []
    for m in messages:
        who = m["role"] if not m.get("name") else f"{m['role']} {m['name']}"
        if m.get("content"):
            lines.append(f"[{who}] {_clip(m['content'])}")
        for c in m.get("tool_calls") or []:
            lines.append(f"[{who} calls] {c['function']['name']}({_clip(c['function']['arguments'] or '')})")
    return "\n".join(lines)


def _render_prompt(prompt: list[Mapping]) -> str:
    # The task (first user turn) and what came right before the choice; not the system prompt.
    first_user = next((i for i, m in enumerate(prompt) if m["role"] == "user"), 0)
    tail = max(first_user + 1, len(prompt) - 2)
    skipped = tail - first_user - 1
    middle = [f"… ({skipped} earlier messages) …"] if skipped > 0 else []
    return "\n".join([render_messages(prompt[first_user : first_user + 1]), *middle, render_messages(prompt[tail:])])


def label_sheet_rows(
    pairs: pa.Table | Iterable[Mapping], limit: int | None = None, kinds: Iterable[str] | None = None
) -> list[dict]:
    """Sheet rows in a reproducible shuffled order (by hash of pair id); the first `limit`."""
    rows = pairs.to_pylist() if isinstance(pairs, pa.Table) else list(pairs)
    if kinds is not None:
        rows = [r for r in rows if r["kind"] in set(kinds)]
    rows.sort(key=lambda r: hashlib.sha256(r["pair_id"].encode()).hexdigest())
    sheet = []
    for r in rows[:limit]:
        a_side = sheet_side_a(r["pair_id"])
        b_side = "rejected" if a_side == "chosen" else "chosen"
        sheet.append(
            {
                "pair_id": r["pair_id"],
                "kind": r["kind"],
                "instance_id": r["instance_id"],
                "prompt": _render_prompt(r["prompt"]),
                "response_a": render_messages(r[a_side]),
                "response_b": render_messages(r[b_side]),
                "annotator": "",
                "choice": "",
                "score": "",
                "note": "",
            }
        )
    return sheet


def export_label_sheet(
    pairs: pa.Table | Iterable[Mapping], path: str | Path, limit: int | None = None, kinds: Iterable[str] | None = None
) -> int:
    """Write the sheet as CSV (or JSONL when the name ends in .jsonl); return the row count."""
    path = Path(path)
    rows = label_sheet_rows(pairs, limit, kinds)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        if path.suffix == ".jsonl":
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            writer = csv.DictWriter(out, fieldnames=SHEET_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    log.info("wrote %d pairs to label to %s", len(rows), path)
    return len(rows)


# -- import ----------------------------------------------------------------------------------
def _records(path: Path) -> Iterable[tuple[int, dict]]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets like to add a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"cannot read labels file: {error}", source=source) from error
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RecordError(f"invalid JSON: {error.msg}", source=source, line=number) from None
                if not isinstance(record, dict):
                    raise RecordError("a label must be a JSON object", source=source, line=number)
                yield number, record
    elif path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        missing = {"pair_id", "annotator"} - set(reader.fieldnames or [])
        if missing or not {"choice", "score"} & set(reader.fieldnames or []):
            raise RecordError(
                f"a labels CSV needs columns pair_id, annotator and choice or score; got {reader.fieldnames}",
                source=source,
                line=1,
            )
        for record in reader:
            yield reader.line_num, record
    else:
        raise RecordError("labels must be a .csv or .jsonl file", source=source)


def _label(record: dict, source: str, line: int) -> dict | None:
    def text(name):
        value = record.get(name)
        return "" if value is None else str(value).strip()

    pair_id, choice_text, score_text = text("pair_id"), text("choice").lower(), text("score")
    if not choice_text and not score_text:
        return None  # not labelled yet
    where = {"source": source, "line": line, "record_id": pair_id or None}
    if not pair_id:
        raise RecordError("a label needs its pair id", field="pair_id", **where)
    if not text("annotator"):
        raise RecordError("a label needs its annotator", field="annotator", **where)
    a_side = sheet_side_a(pair_id)
    flip = {"A": a_side, "B": "rejected" if a_side == "chosen" else "chosen"}
    preferred = None
    if choice_text:
        if choice_text not in _CHOICES:
            raise RecordError(
                f"choice {choice_text!r} is not one of A, B, tie, chosen, rejected", field="choice", **where
            )
        preferred = flip.get(_CHOICES[choice_text], _CHOICES[choice_text])
    score = None
    if score_text:
        try:
            score = float(score_text)
        except ValueError:
            raise RecordError(f"score {score_text!r} is not a number", field="score", **where) from None
        if not math.isfinite(score):
            raise RecordError("score must be finite", field="score", **where)
        score = score if a_side == "chosen" else -score  # sheet scores favour A; turn to chosen
        from_score = "chosen" if score > 0 else "rejected" if score < 0 else "tie"
        if preferred is not None and preferred != from_score:
            raise RecordError(f"choice {choice_text!r} and score {score_text} disagree", field="score", **where)
        preferred = from_score
    return {
        "pair_id": pair_id,
        "annotator": text("annotator"),
        "preferred": preferred,
        "score": score,
        "note": text("note") or None,
        "source": source,
        "source_line": line,
    }


def read_labels(paths: Iterable[str | Path], pair_ids: Iterable[str] | None = None) -> pa.Table:
    """HUMAN_LABELS from labels files; all-or-nothing, so a bad file never replaces good labels.

    With `pair_ids`, a label for an unknown pair is an error (a sheet from another store?).
    """
    known = set(pair_ids) if pair_ids is not None else None
    rows, seen = [], {}
    for path in (Path(p).resolve() for p in paths):  # one name per file, for merge_labels
        for line, record in _records(path):
            label = _label(record, str(path), line)
            if label is None:
                continue
            if known is not None and label["pair_id"] not in known:
                raise RecordError(
                    "no such pair in the store",
                    source=str(path),
                    line=line,
                    record_id=label["pair_id"],
                    field="pair_id",
                )
            key = (label["pair_id"], label["annotator"])
            if key in seen:
                raise RecordError(
                    f"annotator {label['annotator']!r} labelled this pair twice (first at {seen[key]})",
                    source=str(path),
                    line=line,
                    record_id=label["pair_id"],
                    field="annotator",
                )
            seen[key] = f"{path}:{line}"
            rows.append(label)
    return pa.Table.from_pylist(rows, schema=HUMAN_LABELS.schema)


def merge_labels(existing: pa.Table | None, new: pa.Table) -> pa.Table:
    """Stored labels plus newly imported ones; a file imported again replaces its own rows."""
    if existing is None:
        return new
    sources = set(new.column("source").to_pylist())
    kept = [r for r in existing.to_pylist() if r["source"] not in sources]
    clash = {(r["pair_id"], r["annotator"]) for r in kept} & {(r["pair_id"], r["annotator"]) for r in new.to_pylist()}
    if clash:
        pair_id, annotator = min(clash)
        raise RecordError(
            f"annotator {annotator!r} already has a label for this pair from another file ({len(clash)} such)",
            source="human_labels",
            record_id=pair_id,
            field="annotator",
        )
    return pa.Table.from_pylist(kept + new.to_pylist(), schema=HUMAN_LABELS.schema)


# -- figures ---------------------------------------------------------------------------------
def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when chance agreement is total."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    c1, c2 = Counter(first), Counter(second)
    expected = sum(c1[k] * c2[k] for k in c1) / n**2
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float | None:
    """Fleiss' kappa from an items × categories table of rater counts (same raters per item)."""
    if not counts:
        return None
    raters = sum(counts[0])
    if raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("Fleiss' kappa needs the same number (≥ 2) of ratings for every item")
    items = len(counts)
    p_item = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_cat = [sum(row[j] for row in counts) / (items * raters) for j in range(len(counts[0]))]
    p_bar, p_e = sum(p_item) / items, sum(p * p for p in p_cat)
    return None if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    if n == 0:
        return None
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _fisher_interval(r: float, n: int, confidence: float, variance: float = 1.0) -> tuple[float, float] | None:
    if n <= 3 or abs(r) >= 1:
        return None
    z, half = math.atanh(r), stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(variance / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


@dataclass
class Figure:
    metric: str
    value: float | None
    n: int
    ci: tuple[float, float] | None = None
    note: str = ""


@dataclass
class CalibrationReport:
    figures: list[Figure] = field(default_factory=list)
    confidence: float = 0.95

    def get(self, metric: str) -> Figure:
        return next(f for f in self.figures if f.metric == metric)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {
                    "metric": f.metric,
                    "value": f.value,
                    "ci_low": f.ci[0] if f.ci else None,
                    "ci_high": f.ci[1] if f.ci else None,
                    "n": f.n,
                    "note": f.note or None,
                }
                for f in self.figures
            ],
            schema=REWARD_CALIBRATION.schema,
        )

    def markdown(self) -> str:
        level = f"{self.confidence:.0%}"
        lines = ["## Reward calibration", "", f"| figure | value | {level} CI | n | note |", "|---|---|---|---|---|"]
        for f in self.figures:
            value = "—" if f.value is None else str(f.value) if isinstance(f.value, int) else f"{f.value:.3f}"
            ci = f"[{f.ci[0]:.3f}, {f.ci[1]:.3f}]" if f.ci else "—"
            lines.append(f"| {f.metric} | {value} | {ci} | {f.n} | {f.note} |")
        return "\n".join(lines) + "\n"


def _majority(votes: list[str]) -> str | None:
    """The answer with strictly more votes than any other, else None."""
    ranked = Counter(votes).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _agreement(metric: str, pair_ids: list[str], votes: Mapping[str, list[str]], confidence: float) -> Figure:
    majorities = Counter(_majority(votes[p]) for p in pair_ids)
    n = majorities["chosen"] + majorities["rejected"]
    note = f"human majority for a tie: {majorities['tie']}, no majority: {majorities[None]}"
    return Figure(
        metric, majorities["chosen"] / n if n else None, n, wilson_interval(majorities["chosen"], n, confidence), note
    )


def _correlations(margins: list[float], scores: list[float], note: str, confidence: float) -> list[Figure]:
    n = len(margins)
    if n < 3 or len(set(margins)) < 2 or len(set(scores)) < 2:
        why = "needs 3 or more pairs with varying margins and scores"
        return [
            Figure("pearson r (margin vs human score)", None, n, note=why),
            Figure("spearman rho (margin vs human score)", None, n, note=why),
        ]
    pearson = stats.pearsonr(margins, scores)
    spearman = stats.spearmanr(margins, scores)
    r, rho = float(pearson.statistic), float(spearman.statistic)
    return [
        Figure(
            "pearson r (margin vs human score)",
            r,
            n,
            _fisher_interval(r, n, confidence),
            f"p = {pearson.pvalue:.3g}; {note}",
        ),
        Figure(
            "spearman rho (margin vs human score)",
            rho,
            n,
            _fisher_interval(rho, n, confidence, 1.06),
            f"p = {spearman.pvalue:.3g}; {note}",
        ),
    ]


def _inter_annotator(labels: list[dict]) -> Figure:
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for label in labels:
        by_pair[label["pair_id"]][label["annotator"]] = label["preferred"]
    annotators = sorted({label["annotator"] for label in labels})
    if len(annotators) < 2:
        return Figure("inter-annotator kappa", None, 0, note=f"{len(annotators)} annotator(s): needs two or more")
    if len(annotators) == 2:
        both = [p for p in sorted(by_pair) if len(by_pair[p]) == 2]
        first, second = ([by_pair[p][a] for p in both] for a in annotators)
        kappa = cohen_kappa(first, second)
        return Figure(
            "cohen kappa",
            kappa,
            len(both),
            note=f"annotators {annotators[0]} and {annotators[1]}, pairs labelled by both"
            + ("" if kappa is not None else "; undefined: chance agreement is total"),
        )
    sizes = Counter(len(v) for v in by_pair.values() if len(v) >= 2)
    if not sizes:
        return Figure("fleiss kappa", None, 0, note="no pair has two or more labels")
    raters = max(sizes, key=lambda k: (sizes[k], k))
    items = [p for p in sorted(by_pair) if len(by_pair[p]) == raters]
    counts = [[list(by_pair[p].values()).count(c) for c in PREFERENCES] for p in items]
    kappa = fleiss_kappa(counts)
    return Figure(
        "fleiss kappa",
        kappa,
        len(items),
        note=f"{len(annotators)} annotators; pairs with {raters} labels each"
        + ("" if kappa is not None else "; undefined: chance agreement is total"),
    )


def calibrate(
    pairs: pa.Table | Iterable[Mapping], labels: pa.Table | Iterable[Mapping], confidence: float = 0.95
) -> CalibrationReport:
    """The calibration figures of the rewards behind `pairs` against human `labels` (HUMAN_LABELS)."""
    pair_rows = pairs.to_pylist() if isinstance(pairs, pa.Table) else list(pairs)
    label_rows = labels.to_pylist() if isinstance(labels, pa.Table) else list(labels)
    by_id = {p["pair_id"]: p for p in pair_rows}
    matched = [label for label in label_rows if label["pair_id"] in by_id]
    votes: dict[str, list[str]] = defaultdict(list)
    for label in matched:
        votes[label["pair_id"]].append(label["preferred"])
    labelled = sorted(votes)
    annotators = {label["annotator"] for label in matched}

    report = CalibrationReport(confidence=confidence)
    report.figures.append(
        Figure(
            "labels",
            len(matched),
            len(labelled),
            note=f"{len(annotators)} annotator(s), {len(labelled)} pairs; "
            f"{len(label_rows) - len(matched)} label(s) for pairs not in the store",
        )
    )
    report.figures.append(_agreement("agreement with human majority", labelled, votes, confidence))
    for kind in sorted({by_id[p]["kind"] for p in labelled}):
        of_kind = [p for p in labelled if by_id[p]["kind"] == kind]
        report.figures.append(_agreement(f"agreement with human majority ({kind} pairs)", of_kind, votes, confidence))

    scores: dict[str, list[float]] = defaultdict(list)
    numeric = any(label["score"] is not None for label in matched)
    for label in matched:
        if numeric and label["score"] is not None:
            scores[label["pair_id"]].append(label["score"])
        elif not numeric:
            scores[label["pair_id"]].append({"chosen": 1.0, "rejected": -1.0, "tie": 0.0}[label["preferred"]])
    scored = sorted(scores)
    report.figures.extend(
        _correlations(
            [by_id[p]["margin"] for p in scored],
            [sum(scores[p]) / len(scores[p]) for p in scored],
            "mean human score per pair" if numeric else "human choices as +1/0/-1 (no scores given)",
            confidence,
        )
    )
    report.figures.append(_inter_annotator(matched))
    return report
