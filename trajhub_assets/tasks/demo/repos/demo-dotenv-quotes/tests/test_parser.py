import tempfile
import unittest
from pathlib import Path

from envfile import ParseError, load, parse


class BasicSyntaxTest(unittest.TestCase):
    def test_plain_assignments(self):
        self.assertEqual(parse("A=1\nB = two words \nC=\nURL=a=b"), {"A": "1", "B": "two words", "C": "", "URL": "a=b"})

    def test_comments_and_blank_lines_are_ignored(self):
        self.assertEqual(parse("# header\n\nA=1\n   # indented comment\n"), {"A": "1"})

    def test_error_names_the_line(self):
        with self.assertRaises(ParseError) as caught:
            parse("A=1\nnot an assignment\n")
        self.assertEqual(caught.exception.line_number, 2)

    def test_load_reads_a_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ".env"
            path.write_text("A=1\n", encoding="utf-8")
            self.assertEqual(load(path), {"A": "1"})


class DeployFileSyntaxTest(unittest.TestCase):
    """Forms used by the deploy .env files (issue #31)."""

    def test_export_prefix(self):
        self.assertEqual(parse("export TOKEN=abc"), {"TOKEN": "abc"})

    def test_double_quoted_value(self):
        self.assertEqual(parse('GREETING="hello world"'), {"GREETING": "hello world"})

    def test_double_quoted_escapes(self):
        self.assertEqual(parse(r'MSG="line1\nline2 \"quoted\""'), {"MSG": 'line1\nline2 "quoted"'})

    def test_single_quoted_value_is_literal(self):
        self.assertEqual(parse(r"PATTERN='a\nb # not a comment'"), {"PATTERN": r"a\nb # not a comment"})

    def test_inline_comment_after_unquoted_value(self):
        self.assertEqual(parse("PORT=8080  # web port"), {"PORT": "8080"})

    def test_hash_without_space_is_part_of_value(self):
        self.assertEqual(parse("COLOR=#ff0000"), {"COLOR": "#ff0000"})

    def test_comment_after_quoted_value(self):
        self.assertEqual(parse('NAME="a # b" # trailing'), {"NAME": "a # b"})

    def test_unterminated_quote_is_an_error(self):
        with self.assertRaises(ParseError) as caught:
            parse('A=1\nB="open')
        self.assertEqual(caught.exception.line_number, 2)


if __name__ == "__main__":
    unittest.main()
