import csv
import io
import unittest

from csvout import format_field, format_row, to_csv


class FormatFieldTest(unittest.TestCase):
    def test_plain_values_are_not_quoted(self):
        self.assertEqual(format_row(["a", 1, 2.5]), "a,1,2.5")

    def test_none_is_an_empty_field(self):
        self.assertEqual(format_row(["a", None, "b"]), "a,,b")

    def test_field_with_delimiter_is_quoted(self):
        self.assertEqual(format_field("Widget, large"), '"Widget, large"')

    def test_embedded_quote_is_doubled(self):
        self.assertEqual(format_field('12" pipe'), '"12"" pipe"')

    def test_field_with_newline_is_quoted(self):
        self.assertEqual(format_field("line one\nline two"), '"line one\nline two"')

    def test_custom_delimiter_is_quoted_but_comma_is_not(self):
        self.assertEqual(format_row(["a;b", "c,d"], delimiter=";"), '"a;b";c,d')


class ToCsvTest(unittest.TestCase):
    def test_header_and_crlf_line_endings(self):
        self.assertEqual(to_csv([[1, "x"]], header=["id", "name"]), "id,name\r\n1,x\r\n")

    def test_empty_document(self):
        self.assertEqual(to_csv([]), "")

    def test_round_trip_through_stdlib_reader(self):
        rows = [["1", 'say "hi"', "a, b"], ["2", "multi\nline", ""]]
        parsed = list(csv.reader(io.StringIO(to_csv(rows), newline="")))
        self.assertEqual(parsed, rows)


if __name__ == "__main__":
    unittest.main()
