"""The one family of exceptions trajhub raises on bad input.

Every message names where the problem is (file, line, record, field) so that a
user can fix the input without reading a traceback.
"""


class TrajhubError(Exception):
    """Base class: a broken input or configuration, never a failed item."""


class ConfigError(TrajhubError):
    """The project config file is invalid."""


class RecordError(TrajhubError):
    """One input record (a task, a call, a label) is malformed."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        record_id: str | None = None,
        field: str | None = None,
    ):
        where = [source if line is None else f"{source}:{line}"]
        if record_id:
            where.append(f"record {record_id!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.source, self.line, self.record_id, self.field = source, line, record_id, field


class StoreError(TrajhubError):
    """A table or partition could not be written or read as declared."""
