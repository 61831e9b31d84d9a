"""Table names in queries come from Table declarations: a renamed table cannot leave a query
behind that silently reads nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from trajhub_assets.tables import ALL_TABLES

PACKAGE = Path(__file__).resolve().parents[1] / "trajhub_assets"
NAMED = re.compile(r"\b(?:FROM|JOIN)\s+(" + "|".join(t.name for t in ALL_TABLES) + r")\b", re.IGNORECASE)


def literal_text(node: ast.AST) -> str:
    """The literal parts of a string constant or f-string (interpolations left out)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(literal_text(part) for part in node.values)
    return ""


def queries_naming_tables(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, table) of every string literal in `tree` that reads a table by its literal name."""
    return [
        (node.lineno, match.group(1))
        for node in ast.walk(tree)
        if isinstance(node, (ast.Constant, ast.JoinedStr))
        for match in NAMED.finditer(literal_text(node))
    ]


def test_the_scanner_sees_a_literal_name():
    assert queries_naming_tables(ast.parse('store.sql("SELECT * FROM runs r JOIN tasks t ON 1")')) == [
        (1, "runs"),
        (1, "tasks"),
    ]
    assert queries_naming_tables(ast.parse('store.sql(f"SELECT * FROM {RUNS.name}")')) == []


def prose(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are words for people, which may quote a query: docstrings,
    error messages, and command-line help."""
    skipped = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        ):
            skipped.add(id(node.body[0].value))
        inner = (
            [node]
            if isinstance(node, ast.Raise)
            else [k.value for k in node.keywords if k.arg in ("help", "description")]
            if isinstance(node, ast.Call)
            else []
        )
        skipped |= {id(child) for part in inner for child in ast.walk(part)}
    return skipped


def test_no_query_names_a_table_literally():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = prose(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in skipped:
                found += [
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {table}" for line, table in queries_naming_tables(node)
                ]
    assert not found, "use the Table declaration's .name:\n" + "\n".join(sorted(set(found)))
