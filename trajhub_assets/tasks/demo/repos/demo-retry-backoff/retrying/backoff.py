"""Retry a flaky call with exponential backoff."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delays(
    retries: int, *, base: float = 0.5, factor: float = 2.0, max_delay: float = 30.0
) -> list[float]:
    """Return the waits before each retry.

    Args:
        retries: How many retries follow the first attempt.
        base: The first wait, in seconds.
        factor: Each wait is the previous one times `factor`.
        max_delay: No wait is longer than this.

    Returns:
        One wait per retry, in seconds.
    """
    return [base * factor ** (attempt + 1) for attempt in range(retries)]


def call_with_retry(
    fn: Callable[[], T],
    *,
    retries: int = 3,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    base: float = 0.5,
    factor: float = 2.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it succeeds, waiting longer after each failure.

    Args:
        fn: The call to make; it takes no arguments.
        retries: How many times to call again after the first failure.
        retry_on: Exceptions that cause a retry; any other propagates at once.
        base: The first wait, in seconds.
        factor: Each wait is the previous one times `factor`.
        max_delay: No wait is longer than this.
        sleep: Waits the given number of seconds; tests pass a fake.

    Returns:
        What `fn` returned.

    Raises:
        The last exception from `fn` once the retries are used up.
    """
    last_error = None
    for delay in backoff_delays(retries, base=base, factor=factor, max_delay=max_delay):
        try:
            return fn()
        except retry_on as error:
            last_error = error
            sleep(delay)
    raise last_error
