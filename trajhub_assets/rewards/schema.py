"""The reward tables: the rules' hits, the judge's verdicts and the trajectory reward."""

import pyarrow as pa

from trajhub_assets.store import Table

RULE_STEPS = Table(
    name="rule_steps",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("conversation_id", pa.string()),
            pa.field("step_index", pa.int64()),
            pa.field("message_index", pa.int64()),
            pa.field("rule_id", pa.string(), nullable=False),
            pa.field("rule_version", pa.string(), nullable=False),
            pa.field("value", pa.float64(), nullable=False),
            pa.field("tool_call_id", pa.string()),
            pa.field("tool_name", pa.string()),
            pa.field("snippet", pa.string()),
            pa.field("detail", pa.string()),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per rule hit: its value and evidence. conversation_id/step_index are "
    "null for facts about the whole run (tests, a missing trajectory).",
)
RULE_SUMMARY = Table(
    name="rule_summary",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("rule_id", pa.string(), nullable=False),
            pa.field("rule_version", pa.string(), nullable=False),
            pa.field("description", pa.string()),
            pa.field("hits", pa.int64(), nullable=False),
            pa.field("value", pa.float64(), nullable=False),
            pa.field("n_steps", pa.int64(), nullable=False),
            pa.field("ruleset_version", pa.string(), nullable=False),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per (run, rule), also when the rule did not fire: hits and the sum of "
    "their values; n_steps is the main agent's trajectory length.",
)

JUDGE_CHECKS = Table(
    name="judge_checks",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("category", pa.string(), nullable=False),
            pa.field("check_id", pa.string(), nullable=False),
            pa.field("check_type", pa.string()),
            pa.field("result", pa.string(), nullable=False),  # success | fail | error
            pa.field("passed", pa.bool_()),  # null when the judge failed on the item
            pa.field("omitted", pa.bool_(), nullable=False),  # left out by the judge: counted as failed
            pa.field("reason", pa.string()),
            pa.field("error", pa.string()),
            pa.field("judge_model", pa.string()),
            pa.field("prompt_version", pa.string()),
            pa.field("input_hash", pa.string()),
            pa.field("cached", pa.bool_()),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per (run, checklist check): the judge's verdict and reason.",
)
RUBRIC_SCORE = pa.struct(
    [
        ("criterion", pa.string()),
        ("score", pa.int64()),
        ("reward", pa.float64()),
        ("weight", pa.float64()),
        ("reason", pa.string()),
    ]
)
JUDGE_STEPS = Table(
    name="judge_steps",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("conversation_id", pa.string(), nullable=False),
            pa.field("step_index", pa.int64(), nullable=False),
            pa.field("message_index", pa.int64(), nullable=False),
            pa.field("rubric", pa.list_(RUBRIC_SCORE)),
            pa.field("step_reward", pa.float64()),
            pa.field("error", pa.string()),
            pa.field("judge_model", pa.string()),
            pa.field("prompt_version", pa.string()),
            pa.field("input_hash", pa.string()),
            pa.field("cached", pa.bool_()),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per (run, step): rubric scores with reasons and the weighted step reward "
    "(null on a judge error).",
)
JUDGE_SUMMARY = Table(
    name="judge_summary",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("n_checks", pa.int64()),
            pa.field("n_passed", pa.int64()),
            pa.field("n_omitted", pa.int64()),
            pa.field("n_check_errors", pa.int64()),
            pa.field("csr", pa.float64()),
            pa.field("isr", pa.float64()),
            pa.field("n_steps", pa.int64()),
            pa.field("n_step_errors", pa.int64()),
            pa.field("mean_step_reward", pa.float64()),
            pa.field("judge_model", pa.string()),
            pa.field("prompt_version", pa.string()),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per run: checklist CSR/ISR (omitted checks failed; null if any check "
    "errored) and the mean step reward over the steps judged without error.",
)

COMPONENTS = ("outcome", "rules", "step", "checklist")  # of the trajectory reward, in its weights' order
TRAJECTORY_REWARDS = Table(
    name="trajectory_rewards",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("attempt", pa.int64()),
            pa.field("outcome", pa.float64()),
            pa.field("rule_score", pa.float64()),
            pa.field("mean_step_reward", pa.float64()),
            pa.field("checklist_pass_rate", pa.float64()),
            *(pa.field(f"weight_{c}", pa.float64(), nullable=False) for c in COMPONENTS),
            pa.field("components", pa.list_(pa.string()), nullable=False),
            pa.field("reward", pa.float64()),
            pa.field("reward_version", pa.string(), nullable=False),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per run: the reward, its components and the configured weights; "
    "`components` lists those that were known and used; `reward_version` is the "
    "trajectory_rewards code version (this code and the weights).",
)
