"""The release: human calibration of the rewards, the leaderboard, the secret scan and the
Hugging Face dataset itself."""

from trajhub_assets.release.calibration import (
    HUMAN_LABELS, REWARD_CALIBRATION, CalibrationReport, calibrate, export_label_sheet, merge_labels, read_labels,
    sheet_side_a,
)
from trajhub_assets.release.leaderboard import LEADERBOARD, Leaderboard, leaderboard, run_summary_sql
from trajhub_assets.release.release import (
    CONFIGS, Release, ReleaseError, ReleaseInputs, build_release, push_release, release_tables, verify_release,
)
from trajhub_assets.release.secrets import SecretLeakError, check_no_secrets, scan_table

__all__ = [
    "HUMAN_LABELS", "REWARD_CALIBRATION", "CalibrationReport", "calibrate", "export_label_sheet", "merge_labels",
    "read_labels", "sheet_side_a", "LEADERBOARD", "Leaderboard", "leaderboard", "run_summary_sql", "CONFIGS",
    "Release", "ReleaseError", "ReleaseInputs", "build_release", "push_release", "release_tables",
    "verify_release", "SecretLeakError", "check_no_secrets", "scan_table",
]
