import unittest

from mdtable import render_table


class RenderTableTest(unittest.TestCase):
    def test_basic_table_is_padded(self):
        self.assertEqual(
            render_table(["name", "n"], [["alpha", 1], ["b", 22]]),
            "| name  | n   |\n"
            "| ----- | --- |\n"
            "| alpha | 1   |\n"
            "| b     | 22  |\n",
        )

    def test_alignment_row(self):
        text = render_table(["a", "b", "c"], [], align=["left", "right", "center"])
        self.assertEqual(text.splitlines()[1], "| :-- | --: | :-: |")

    def test_align_length_must_match(self):
        with self.assertRaises(ValueError):
            render_table(["a", "b"], [], align=["left"])

    def test_pipe_in_cell_is_escaped(self):
        text = render_table(["expr"], [["a | b"]])
        self.assertEqual(text.splitlines()[2], r"| a \| b |")

    def test_line_break_in_cell_becomes_br(self):
        text = render_table(["note"], [["first\nsecond"]])
        self.assertEqual(text.splitlines()[2], "| first<br>second |")

    def test_none_renders_as_empty_cell(self):
        text = render_table(["a", "b"], [[None, "x"]])
        self.assertEqual(text.splitlines()[2], "|     | x   |")

    def test_short_row_is_padded_with_empty_cells(self):
        text = render_table(["a", "b", "c"], [["1"]])
        self.assertEqual(text.splitlines()[2], "| 1   |     |     |")

    def test_long_row_raises(self):
        with self.assertRaises(ValueError):
            render_table(["a"], [["1", "2"]])


if __name__ == "__main__":
    unittest.main()
