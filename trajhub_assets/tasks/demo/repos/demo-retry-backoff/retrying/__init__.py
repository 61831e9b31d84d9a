"""Retry a call with exponential backoff."""

from retrying.backoff import backoff_delays, call_with_retry

__all__ = ["backoff_delays", "call_with_retry"]
