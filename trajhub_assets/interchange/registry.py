"""The interchange formats, one entry each: a new format is its module plus one entry of FORMATS.

An entry reads a file either as recorded calls (`read_calls`: they are merged as recorded
runs are) or document by document as conversations (`read_document`), and may write a stored
conversation as one document (`write`). sources.py and the `trajhub import` / `trajhub export`
commands only go through this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trajhub_assets.errors import TrajhubError
from trajhub_assets.interchange.atif import atif_to_conversations, conversation_to_atif, validate_atif
from trajhub_assets.interchange.messages import chat_to_conversation, conversation_to_chat
from trajhub_assets.interchange.minivela import read_minivela

# A document (one JSONL line or one JSON file) -> its conversations and what the `imports`
# row says of them (agent name and version, format version).
DocumentReader = Callable[..., tuple[list[dict], dict]]
# A stored conversation and its run's (scaffold, scaffold version) -> the document to write.
DocumentWriter = Callable[[dict, tuple[str | None, str | None]], dict]


@dataclass(frozen=True)
class Format:
    name: str
    title: str  # how messages name it
    read_calls: Callable[[Path], list[dict]] | None = None
    read_document: DocumentReader | None = None
    write: DocumentWriter | None = None
    one_file: bool = True  # the export is one JSONL file; else also a directory of <conversation_id>.json


def _read_atif(document: dict, *, source: str, line: int | None) -> tuple[list[dict], dict]:
    return (
        atif_to_conversations(document, source=source, line=line),
        {
            "agent_name": document["agent"]["name"],
            "agent_version": document["agent"]["version"],
            "format_version": document["schema_version"],
        },
    )


def _write_atif(conversation: dict, scaffold: tuple[str | None, str | None]) -> dict:
    name, version = scaffold
    document = conversation_to_atif(conversation, agent_name=name or "trajhub", agent_version=version or "unknown")
    validate_atif(document, source=f"export of {conversation['meta']['conversation_id']}")  # never write bad ATIF
    return document


def _read_chat(document: dict, *, source: str, line: int | None) -> tuple[list[dict], dict]:
    return [chat_to_conversation(document, source=source, line=line)], {}


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("mini-vela", "mini-vela", read_calls=read_minivela),
        Format("atif", "ATIF", read_document=_read_atif, write=_write_atif, one_file=False),
        Format("openai", "OpenAI/TRL", read_document=_read_chat, write=lambda c, _: conversation_to_chat(c)),
    )
}


def import_formats() -> list[str]:
    return [f.name for f in FORMATS.values() if f.read_calls or f.read_document]


def export_formats() -> list[str]:
    return [f.name for f in FORMATS.values() if f.write]


def import_format(name: str) -> Format:
    if name not in import_formats():
        raise TrajhubError(f"unknown import format {name!r}; one of {import_formats()}")
    return FORMATS[name]


def export_format(name: str) -> Format:
    if name not in export_formats():
        raise TrajhubError(f"unknown export format {name!r}; one of {export_formats()}")
    return FORMATS[name]
