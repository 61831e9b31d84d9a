"""The preference_pairs table and the chat message form its conversations take."""

import pyarrow as pa

from trajhub_assets.merge.schema import CONTENT_PART, THINKING_BLOCK
from trajhub_assets.store import Table

CHAT_TOOL_CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
CHAT_MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("reasoning_content", pa.string()),
        ("tool_calls", pa.list_(CHAT_TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
        ("thinking_blocks", pa.list_(THINKING_BLOCK)),
        ("content_parts", pa.list_(CONTENT_PART)),
        ("extra", pa.string()),
    ]
)
# What a training user reads in each message field; the release's card prints it.
CHAT_MESSAGE_DOCS = {
    "role": "`system`, `user`, `assistant` or `tool`",
    "content": "the message's text; null where the model (or client) sent null, e.g. an assistant "
    "turn of tool calls only",
    "reasoning_content": "the model's reasoning as plain text, when it gave any (of thinking blocks: their "
    "text joined, `[redacted_thinking]` for a redacted one)",
    "tool_calls": "OpenAI form: `id`, `type`, `function` {`name`, `arguments`: the JSON string as generated}",
    "tool_call_id": "the tool call a `tool` message answers",
    "name": "the tool's name in a `tool` message, else the sender's name if the client gave one",
    "thinking_blocks": "the model's thinking as sent, `{type, thinking, signature, data}`: `thinking` "
    "with its `signature`, `redacted_thinking` with its encrypted `data`, unchanged; "
    "Anthropic wants them back exactly so in later turns",
    "content_parts": "the blocks in order, `{type, text, media_type, ref}`, where `content` alone cannot "
    "say them: a `thinking`/`redacted_thinking` part stands for the next thinking block, "
    "a `tool_use` part's `ref` is its call id, media is a reference (URL, `file:<id>` or "
    "`sha256:<hex>` of the payload), never the payload",
    "extra": "a JSON object (as a string) of the wire fields no other key holds, keyed by their path "
    "in the wire message (`provider_specific_fields`, `content[2].citations`, ...)",
}
CHAT_MESSAGES = pa.list_(CHAT_MESSAGE)

PREFERENCE_PAIRS = Table(
    name="preference_pairs",
    schema=pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # trajectory | step
            pa.field("instance_id", pa.string(), nullable=False),
            pa.field("prompt", CHAT_MESSAGES),
            pa.field("chosen", CHAT_MESSAGES),
            pa.field("rejected", CHAT_MESSAGES),
            pa.field("tools_json", pa.string(), metadata={"doc": "the chosen run's tools, OpenAI form, as JSON"}),
            pa.field("chosen_run_id", pa.string()),
            pa.field("rejected_run_id", pa.string()),
            pa.field("chosen_model", pa.string()),
            pa.field("rejected_model", pa.string()),
            pa.field("chosen_attempt", pa.int64()),
            pa.field("rejected_attempt", pa.int64()),
            pa.field("chosen_reward", pa.float64(), metadata={"doc": "the reward the pair is ranked by"}),
            pa.field("rejected_reward", pa.float64()),
            pa.field("margin", pa.float64()),
            pa.field("chosen_trajectory_reward", pa.float64()),
            pa.field("rejected_trajectory_reward", pa.float64()),
            pa.field("chosen_step_index", pa.int64()),
            pa.field("rejected_step_index", pa.int64()),
            pa.field("prompt_shared", pa.bool_(), metadata={"doc": "both runs had exactly this prompt"}),
            pa.field("basis", pa.string(), metadata={"doc": "reward, or tie:shorter"}),
            pa.field("reward_version", pa.string()),
        ]
    ),
    partitioned_by=("instance",),
    description="DPO pairs of one instance in TRL's conversational preference format, with "
    "the runs, rewards and margin behind each choice.",
)
