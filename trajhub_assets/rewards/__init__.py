"""Rewards: the auditable rule layer, the LLM judge and the trajectory reward.

Plain functions over merged conversations, task records and run outcomes; the assets
read their inputs from the store, call these and write the declared tables.
"""

from trajhub_assets.rewards.judge import (
    JUDGE_CHECKS, JUDGE_STEPS, JUDGE_SUMMARY, Judge, JudgeCache, JudgeOutput, JudgeUsage, default_cache,
    judge_partition,
)
from trajhub_assets.rewards.minivela_judge import read_minivela_judge
from trajhub_assets.rewards.rules import (
    RULE_STEPS, RULE_SUMMARY, RULES, RULESET_VERSION, Rule, RuleContext, median_steps, rule_tables, score_rules,
    summarize_rules, trajectory_lengths,
)
from trajhub_assets.rewards.trajectory import TRAJECTORY_REWARDS, trajectory_rewards

__all__ = [
    "JUDGE_CHECKS", "JUDGE_STEPS", "JUDGE_SUMMARY", "Judge", "JudgeCache", "JudgeOutput", "JudgeUsage",
    "default_cache", "judge_partition", "read_minivela_judge", "RULE_STEPS", "RULE_SUMMARY", "RULES",
    "RULESET_VERSION", "Rule", "RuleContext", "median_steps", "rule_tables", "score_rules", "summarize_rules",
    "trajectory_lengths", "TRAJECTORY_REWARDS", "trajectory_rewards",
]
