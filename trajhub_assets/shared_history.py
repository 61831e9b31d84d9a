"""Calls that repeat their history as the very same objects (an import's records, records
rebuilt from the store): how much of a call's list is the list of the call before."""

import operator


def repeated_prefix(values: list, before: list) -> int:
    """How many first items of `values` are the very items of `before`: all of them, or all but
    its last (a client resends that one changed, its cache breakpoint moved off); else 0."""
    n = len(before)
    if n <= len(values) and all(map(operator.is_, values, before)):
        return n
    if 1 < n <= len(values) + 1 and all(map(operator.is_, values, before[:-1])):
        return n - 1
    return 0
