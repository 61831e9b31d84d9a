"""preference_pairs: trajectory- and step-level DPO pairs of one instance, in TRL's format."""

from trajhub_assets.pairs.pairs import (
    CHAT_MESSAGE, CHAT_MESSAGE_DOCS, CHAT_MESSAGES, PREFERENCE_PAIRS, PairPolicy, PairResult, chat_message, message_key,
    preference_pairs, preview_markdown, select_fairly,
)

__all__ = ["CHAT_MESSAGE", "CHAT_MESSAGE_DOCS", "CHAT_MESSAGES", "PREFERENCE_PAIRS", "PairPolicy", "PairResult", "chat_message",
           "message_key", "preference_pairs", "preview_markdown", "select_fairly"]
