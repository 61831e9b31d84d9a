"""merged_trajectories: rebuild whole conversations from a run's per-call records."""

from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.normalize import read_call
from trajhub_assets.merge.schema import CONVERSATION_SCHEMA, conversations_to_table, table_to_conversations

__all__ = ["merge_calls", "read_call", "CONVERSATION_SCHEMA", "conversations_to_table",
           "table_to_conversations"]
