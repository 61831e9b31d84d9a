"""reward_calibration: label sheets in and out, and figures checked against hand-computed values."""

import csv
import json
import math

import pytest

from trajhub_assets.errors import RecordError
from trajhub_assets.release.calibration import (
    calibrate,
    cohen_kappa,
    export_label_sheet,
    fleiss_kappa,
    label_sheet_rows,
    merge_labels,
    read_labels,
    sheet_side_a,
)
from trajhub_assets.release.schema import HUMAN_LABELS, REWARD_CALIBRATION

Z95 = 1.959963984540054


def pair(pair_id, margin, kind="trajectory"):
    return {
        "pair_id": pair_id,
        "kind": kind,
        "instance_id": "inst-1",
        "margin": margin,
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "fix it"}],
        "chosen": [{"role": "assistant", "content": f"good answer {pair_id}", "tool_calls": None}],
        "rejected": [{"role": "assistant", "content": f"bad answer {pair_id}", "tool_calls": None}],
    }


PAIRS = [pair("p1", 0.8), pair("p2", 0.5), pair("p3", 0.3), pair("p4", 0.1, kind="step")]
# (pair, annotator, preferred side, score for chosen over rejected)
VOTES = [
    ("p1", "a", "chosen", 2),
    ("p1", "b", "chosen", 2),
    ("p1", "c", "chosen", 1),
    ("p2", "a", "chosen", 1),
    ("p2", "b", "rejected", -1),
    ("p2", "c", "chosen", 1),
    ("p3", "a", "rejected", -1),
    ("p3", "b", "rejected", -2),
    ("p3", "c", "tie", 0),
    ("p4", "a", "tie", 0),
    ("p4", "b", "tie", 0),
    ("p4", "c", "chosen", 1),
]


def as_sheet_answer(pair_id, preferred, score):
    """What an annotator writes on the sheet: A/B and a score in favour of A."""
    a_is_chosen = sheet_side_a(pair_id) == "chosen"
    choice = "tie" if preferred == "tie" else ("A" if (preferred == "chosen") == a_is_chosen else "B")
    return choice, score if a_is_chosen else -score


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    with path.open("w") as out:
        for pair_id, annotator, preferred, score in VOTES:
            choice, sheet_score = as_sheet_answer(pair_id, preferred, score)
            out.write(
                json.dumps({"pair_id": pair_id, "annotator": annotator, "choice": choice, "score": sheet_score}) + "\n"
            )
    return path


def test_import_turns_sheet_answers_to_the_reward_sides(labels_file):
    labels = read_labels([labels_file], pair_ids=[p["pair_id"] for p in PAIRS])
    assert labels.schema == HUMAN_LABELS.schema
    got = {(r["pair_id"], r["annotator"]): (r["preferred"], r["score"]) for r in labels.to_pylist()}
    assert got == {(p, a): (pref, float(s)) for p, a, pref, s in VOTES}


def test_figures_match_hand_computed_values(labels_file):
    report = calibrate(PAIRS, read_labels([labels_file]))
    # Majorities: p1 chosen, p2 chosen, p3 rejected, p4 tie → 2 of 3 decided pairs agree.
    agreement = report.get("agreement with human majority")
    assert (agreement.value, agreement.n) == (pytest.approx(2 / 3), 3)
    p, n = 2 / 3, 3  # Wilson: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    assert agreement.ci == pytest.approx((centre - half, centre + half))
    assert "tie: 1" in agreement.note
    assert report.get("agreement with human majority (step pairs)").n == 0

    # Pearson of margins x = (.8, .5, .3, .1) and mean scores y = (5/3, 1/3, -1, 1/3):
    # dx = (.375, .075, -.125, -.325), dy = (4/3, 0, -4/3, 0)
    # r = Σdxdy / sqrt(Σdx² Σdy²) = (2/3) / sqrt(.2675 · 32/9)
    r = (2 / 3) / math.sqrt(0.2675 * 32 / 9)
    pearson = report.get("pearson r (margin vs human score)")
    assert (pearson.value, pearson.n) == (pytest.approx(r), 4)
    # Fisher z with n = 4: se = 1/sqrt(n - 3) = 1
    assert pearson.ci == pytest.approx((math.tanh(math.atanh(r) - Z95), math.tanh(math.atanh(r) + Z95)))
    # Spearman: ranks x = (4, 3, 2, 1), y = (4, 2.5, 1, 2.5) → 3 / sqrt(5 · 4.5)
    rho = 3 / math.sqrt(5 * 4.5)
    spearman = report.get("spearman rho (margin vs human score)")
    assert spearman.value == pytest.approx(rho)
    half = Z95 * math.sqrt(1.06)
    assert spearman.ci == pytest.approx((math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)))

    # Fleiss, 3 raters, categories (chosen, rejected, tie):
    # p1 (3,0,0) P=1; p2 (2,1,0), p3 (0,2,1), p4 (1,0,2) P=1/3 each → P̄ = 0.5
    # p_j = (6/12, 3/12, 3/12) → Pe = .25 + .0625 + .0625 = .375 → κ = .125 / .625 = 0.2
    kappa = report.get("fleiss kappa")
    assert (kappa.value, kappa.n) == (pytest.approx(0.2), 4)
    assert report.get("labels").value == 12

    table = report.table()
    assert table.schema == REWARD_CALIBRATION.schema and table.num_rows == len(report.figures)
    markdown = report.markdown()
    assert "| fleiss kappa | 0.200 |" in markdown and f"| {r:.3f} |" in markdown


def test_cohen_kappa_for_two_annotators():
    # Wikipedia's example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → po = .7, pe = .5, κ = .4
    first = ["chosen"] * 25 + ["rejected"] * 25
    second = ["chosen"] * 20 + ["rejected"] * 5 + ["chosen"] * 10 + ["rejected"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    labels = [
        {"pair_id": f"p{i}", "annotator": who, "preferred": side, "score": None}
        for who, sides in (("ann", first), ("bob", second))
        for i, side in enumerate(sides)
    ]
    pairs = [pair(f"p{i}", 0.1 + i / 100) for i in range(50)]
    report = calibrate(pairs, labels)
    kappa = report.get("cohen kappa")
    assert (kappa.value, kappa.n) == (pytest.approx(0.4), 50)
    # no scores given: choices count +1/-1, so correlation is still reported
    assert "no scores given" in report.get("pearson r (margin vs human score)").note


def test_fleiss_kappa_on_the_textbook_table():
    # Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories → κ ≈ 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [3, 0]])


def test_too_little_data_says_why():
    report = calibrate(PAIRS[:2], [{"pair_id": "p1", "annotator": "a", "preferred": "chosen", "score": 1.0}])
    assert report.get("pearson r (margin vs human score)").value is None
    assert "needs two or more" in report.get("inter-annotator kappa").note


def test_sheet_round_trip(tmp_path):
    sheet = tmp_path / "sheet.csv"
    assert export_label_sheet(PAIRS, sheet, limit=3) == 3
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["pair_id"] for r in rows] == [r["pair_id"] for r in label_sheet_rows(PAIRS, limit=3)]
    for row in rows:  # blind: A is the chosen response exactly when sheet_side_a says so
        assert ("good answer" in row["response_a"]) == (sheet_side_a(row["pair_id"]) == "chosen")
        assert "fix it" in row["prompt"] and "sys" not in row["prompt"]
        row.update(annotator="ann", choice="A")
    rows[0]["choice"] = ""  # not labelled yet: skipped
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labels = read_labels([sheet]).to_pylist()
    assert len(labels) == 2
    for label in labels:
        assert label["preferred"] == sheet_side_a(label["pair_id"]) and label["source_line"] >= 2


def test_bad_labels_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"pair_id": "p1", "annotator": "a", "choice": "A"})
        + "\n"
        + json.dumps({"pair_id": "p2", "annotator": "a", "choice": "maybe"})
        + "\n"
    )
    with pytest.raises(RecordError, match=r"bad.jsonl:2, record 'p2', field 'choice'"):
        read_labels([bad])
    twice = tmp_path / "twice.jsonl"
    twice.write_text((json.dumps({"pair_id": "p1", "annotator": "a", "score": 1}) + "\n") * 2)
    with pytest.raises(RecordError, match="labelled this pair twice"):
        read_labels([twice])
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"pair_id": "zz", "annotator": "a", "choice": "tie"}) + "\n")
    with pytest.raises(RecordError, match="no such pair"):
        read_labels([unknown], pair_ids=["p1"])
    contradicts = tmp_path / "contradicts.jsonl"
    contradicts.write_text(json.dumps({"pair_id": "p1", "annotator": "a", "choice": "tie", "score": 2}) + "\n")
    with pytest.raises(RecordError, match="disagree"):
        read_labels([contradicts])


def test_reimporting_a_file_replaces_its_rows(labels_file, tmp_path):
    first = read_labels([labels_file])
    again = merge_labels(first, read_labels([labels_file]))
    assert again.num_rows == first.num_rows
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"pair_id": "p1", "annotator": "a", "choice": "tie"}) + "\n")
    with pytest.raises(RecordError, match="already has a label"):
        merge_labels(first, read_labels([other]))
