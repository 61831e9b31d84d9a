"""README.md's reference sections are what the code says."""

from pathlib import Path

from trajhub_assets.tables import reference_markdown

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_table_reference_is_current():
    documented = README.split("<!-- tables:start -->\n")[1].split("<!-- tables:end -->")[0]
    assert documented == reference_markdown(), "run `trajhub tables` and paste it into README.md"


def test_quick_start_is_two_commands():
    block = README.split("## Quick start")[1].split("```bash\n")[1].split("```")[0]
    assert [line.split()[0] for line in block.strip().splitlines()] == ["./scripts/demo.sh", "./scripts/test.sh"]
