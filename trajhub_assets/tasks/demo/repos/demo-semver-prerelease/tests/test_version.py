import unittest

from semver_tools import Version, compare, max_version, parse


class ParseTest(unittest.TestCase):
    def test_parse_full_version(self):
        self.assertEqual(parse("v1.2.3-rc.1+build.7"), Version(1, 2, 3, ("rc", "1")))

    def test_invalid_version_raises(self):
        for text in ("1.2", "01.2.3", "1.2.3-", "latest"):
            with self.subTest(text=text), self.assertRaises(ValueError):
                parse(text)


class CompareTest(unittest.TestCase):
    def test_numeric_core_order(self):
        self.assertEqual(compare("1.10.0", "1.9.0"), 1)
        self.assertEqual(compare("2.0.0", "10.0.0"), -1)

    def test_build_metadata_is_ignored(self):
        self.assertEqual(compare("1.0.0+a", "1.0.0+b"), 0)

    def test_release_outranks_its_prereleases(self):
        self.assertEqual(compare("1.0.0", "1.0.0-rc.1"), 1)
        self.assertEqual(compare("1.0.0-alpha", "1.0.0"), -1)

    def test_numeric_identifiers_compare_as_numbers(self):
        self.assertEqual(compare("2.0.0-alpha.10", "2.0.0-alpha.2"), 1)

    def test_numeric_identifier_below_alphanumeric(self):
        self.assertEqual(compare("1.0.0-alpha.1", "1.0.0-alpha.beta"), -1)

    def test_spec_example_order(self):
        ordered = [
            "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
            "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0",
        ]
        for lower, higher in zip(ordered, ordered[1:]):
            with self.subTest(lower=lower, higher=higher):
                self.assertEqual(compare(lower, higher), -1)
                self.assertEqual(compare(higher, lower), 1)


class MaxVersionTest(unittest.TestCase):
    def test_max_prefers_release(self):
        self.assertEqual(max_version(["1.0.0-rc.1", "1.0.0", "0.9.9"]), "1.0.0")

    def test_max_of_nothing_raises(self):
        with self.assertRaises(ValueError):
            max_version([])


if __name__ == "__main__":
    unittest.main()
