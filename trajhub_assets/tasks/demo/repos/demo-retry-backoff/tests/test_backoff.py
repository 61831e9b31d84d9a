import unittest

from retrying import backoff_delays, call_with_retry


class Flaky:
    """Fails `failures` times with ConnectionError, then returns "ok"."""

    def __init__(self, failures):
        self.failures = failures
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"failure {self.calls}")
        return "ok"


class BackoffDelaysTest(unittest.TestCase):
    def test_delays_start_at_base_and_grow(self):
        self.assertEqual(backoff_delays(3, base=0.5, factor=2), [0.5, 1.0, 2.0])

    def test_delays_are_capped(self):
        self.assertEqual(backoff_delays(4, base=1, factor=2, max_delay=5), [1, 2, 4, 5])

    def test_no_retries_no_delays(self):
        self.assertEqual(backoff_delays(0), [])


class CallWithRetryTest(unittest.TestCase):
    def setUp(self):
        self.waits = []

    def test_success_first_time_does_not_wait(self):
        fn = Flaky(0)
        self.assertEqual(call_with_retry(fn, sleep=self.waits.append), "ok")
        self.assertEqual((fn.calls, self.waits), (1, []))

    def test_succeeds_after_failures(self):
        fn = Flaky(2)
        self.assertEqual(call_with_retry(fn, retries=3, sleep=self.waits.append), "ok")
        self.assertEqual((fn.calls, self.waits), (3, [0.5, 1.0]))

    def test_gives_up_after_retries_plus_one_calls(self):
        fn = Flaky(10)
        with self.assertRaises(ConnectionError) as caught:
            call_with_retry(fn, retries=3, sleep=self.waits.append)
        self.assertEqual(str(caught.exception), "failure 4")
        self.assertEqual((fn.calls, self.waits), (4, [0.5, 1.0, 2.0]))

    def test_zero_retries_means_one_call(self):
        fn = Flaky(1)
        with self.assertRaises(ConnectionError):
            call_with_retry(fn, retries=0, sleep=self.waits.append)
        self.assertEqual(fn.calls, 1)

    def test_other_exceptions_are_not_retried(self):
        def broken():
            raise KeyError("bug")

        with self.assertRaises(KeyError):
            call_with_retry(broken, retry_on=(ConnectionError,), sleep=self.waits.append)
        self.assertEqual(self.waits, [])

    def test_negative_retries_raise(self):
        with self.assertRaises(ValueError):
            call_with_retry(Flaky(0), retries=-1, sleep=self.waits.append)


if __name__ == "__main__":
    unittest.main()
