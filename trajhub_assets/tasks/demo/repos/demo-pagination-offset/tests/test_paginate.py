import unittest

from pager import paginate

ORDERS = list(range(1, 26))  # 25 orders: pages of 10 hold 10, 10 and 5


class PaginateTest(unittest.TestCase):
    def test_first_page_starts_with_first_item(self):
        self.assertEqual(paginate(ORDERS, page=1, per_page=10).items, list(range(1, 11)))

    def test_second_page(self):
        self.assertEqual(paginate(ORDERS, page=2, per_page=10).items, list(range(11, 21)))

    def test_partial_last_page_is_counted_and_returned(self):
        page = paginate(ORDERS, page=3, per_page=10)
        self.assertEqual(page.total_pages, 3)
        self.assertEqual(page.items, [21, 22, 23, 24, 25])

    def test_exact_multiple_has_no_extra_page(self):
        self.assertEqual(paginate(list(range(20)), per_page=10).total_pages, 2)

    def test_empty_list_has_no_pages(self):
        page = paginate([], page=1, per_page=10)
        self.assertEqual((page.items, page.total_pages), ([], 0))

    def test_page_past_the_end_is_empty(self):
        self.assertEqual(paginate(ORDERS, page=9, per_page=10).items, [])

    def test_invalid_arguments_raise(self):
        with self.assertRaises(ValueError):
            paginate(ORDERS, page=0)
        with self.assertRaises(ValueError):
            paginate(ORDERS, per_page=0)


if __name__ == "__main__":
    unittest.main()
