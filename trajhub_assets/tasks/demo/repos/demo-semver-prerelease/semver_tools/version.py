"""Semantic Versioning 2.0.0: parsing and precedence."""

import re
from collections.abc import Iterable
from dataclasses import dataclass

_VERSION = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()


def parse(text: str) -> Version:
    """Parse `1.2.3`, `v1.2.3`, `1.2.3-rc.1` or `1.2.3+build.5`; build metadata is dropped."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"not a semantic version: {text!r}")
    major, minor, patch, prerelease = match.groups()
    identifiers = tuple(prerelease.split(".")) if prerelease else ()
    return Version(int(major), int(minor), int(patch), identifiers)


def _precedence_key(version: Version) -> tuple:
    return (version.major, version.minor, version.patch, version.prerelease)


def compare(a: str, b: str) -> int:
    """Return -1 if a < b, 0 if they have the same precedence, 1 if a > b."""
    key_a, key_b = _precedence_key(parse(a)), _precedence_key(parse(b))
    return (key_a > key_b) - (key_a < key_b)


def max_version(versions: Iterable[str]) -> str:
    """Return the highest version of `versions` (the first one among equals)."""
    best = None
    for version in versions:
        if best is None or compare(version, best) > 0:
            best = version
    if best is None:
        raise ValueError("max_version() needs at least one version")
    return best
