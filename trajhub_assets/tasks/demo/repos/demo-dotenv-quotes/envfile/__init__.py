"""Read .env files."""

from envfile.parser import ParseError, load, parse

__all__ = ["ParseError", "load", "parse"]
