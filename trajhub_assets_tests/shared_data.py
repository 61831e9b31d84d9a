"""Paths of the real fixtures in ../shared/data (beside the repository, as in CI).

They are required: a missing fixture is a broken checkout, so it fails loudly
instead of skipping tests.
"""

from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    raise RuntimeError(f"the real fixtures are missing: expected {DATA} (../shared beside the repo)")

OCTOCODINGBENCH_TASKS = DATA / "octocodingbench" / "tasks_checklist_72.jsonl"
MINIVELA = DATA / "minivela_sample"
