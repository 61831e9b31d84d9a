import unittest
from datetime import date

from daterange import parse_range


class SinglePeriodTest(unittest.TestCase):
    def test_day(self):
        self.assertEqual(parse_range("2024-03-15"), (date(2024, 3, 15), date(2024, 3, 15)))

    def test_month(self):
        self.assertEqual(parse_range("2024-01"), (date(2024, 1, 1), date(2024, 1, 31)))

    def test_leap_february(self):
        self.assertEqual(parse_range("2024-02"), (date(2024, 2, 1), date(2024, 2, 29)))

    def test_december(self):
        self.assertEqual(parse_range("2023-12"), (date(2023, 12, 1), date(2023, 12, 31)))

    def test_year(self):
        self.assertEqual(parse_range("2024"), (date(2024, 1, 1), date(2024, 12, 31)))


class RangeTest(unittest.TestCase):
    def test_day_to_day(self):
        self.assertEqual(parse_range("2024-01-05..2024-01-09"), (date(2024, 1, 5), date(2024, 1, 9)))

    def test_month_to_month_covers_the_last_month(self):
        self.assertEqual(parse_range("2024-01..2024-03"), (date(2024, 1, 1), date(2024, 3, 31)))

    def test_range_ending_in_december(self):
        self.assertEqual(parse_range("2023-11..2023-12"), (date(2023, 11, 1), date(2023, 12, 31)))

    def test_reversed_range_raises(self):
        with self.assertRaises(ValueError):
            parse_range("2024-03-01..2024-02-01")

    def test_garbage_raises(self):
        with self.assertRaises(ValueError):
            parse_range("last week")


if __name__ == "__main__":
    unittest.main()
