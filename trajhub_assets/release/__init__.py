"""The release: human calibration of the rewards, the leaderboard, the secret scan and the
Hugging Face dataset itself."""
