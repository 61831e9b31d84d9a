"""Semantic version parsing and ordering."""

from semver_tools.version import Version, compare, max_version, parse

__all__ = ["Version", "compare", "max_version", "parse"]
