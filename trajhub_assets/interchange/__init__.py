"""Import other tools' recordings as trajhub call records."""

from trajhub_assets.interchange.minivela import minivela_to_calls, read_minivela

__all__ = ["minivela_to_calls", "read_minivela"]
