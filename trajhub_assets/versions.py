"""Code versions: each asset's is a hash of what decides its output, and of nothing else.

| asset | decided by |
| --- | --- |
| tasks | the catalog loader, the config's task sources |
| merged_trajectories | the merge's code |
| rule_rewards | the ruleset, the config's forbidden commands |
| judge_rewards | the judge's code (prompts, rubric, schema), model, prompt version, weights, request grouping |
| trajectory_rewards | the reward's code, the config's trajectory weights |
| preference_pairs | the pairing code, the pair policy from the config |
| reward_calibration, leaderboard | their code |
| hf_dataset_release | the release code, the release's name and license |

A new code version marks an asset stale, and its automation condition (automation.py)
recomputes it; what is downstream follows its inputs. raw_trajectories and release_replay
have none: agents and replays are re-run by a person, never because code changed. Hashing
the judge's whole module is safe: a re-judge with unchanged prompts hits the judge's cache.
An asset's code includes its domain's schema.py, which declares the tables it writes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from pathlib import Path

from trajhub_assets.config import ProjectConfig, RewardConfig


def digest(*parts) -> str:
    """A short, stable hash of JSON-able parts (dicts by sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def _source(path: str) -> bytes:
    # trajectory_rewards stamps every partition's rows with a version: read each source once.
    return Path(path).read_bytes()


def source_digest(*modules: str) -> str:
    """A short hash of the source files of the named modules (`trajhub_assets.` omitted)."""
    sha = hashlib.sha256()
    for name in modules:
        sha.update(_source(importlib.import_module(f"trajhub_assets.{name}").__file__))
    return sha.hexdigest()[:12]


def trajectory_reward_version(rewards: RewardConfig) -> str:
    """What decides a trajectory reward: its code and the weights; also each row's reward_version."""
    return digest(source_digest("rewards.trajectory", "rewards.schema"), rewards.trajectory_weights)


def code_versions(config: ProjectConfig) -> dict[str, str]:
    """Asset name -> code version, for the project `config`."""
    from trajhub_assets.pairs.pairs import PairPolicy
    from trajhub_assets.rewards.rules import RULESET_VERSION

    judge = config.judge
    return {
        "tasks": digest(
            source_digest("tasks.catalog", "tasks.schema"), [source.model_dump() for source in config.tasks]
        ),
        "merged_trajectories": source_digest("merge.merge", "merge.normalize", "merge.schema"),
        "rule_rewards": digest(RULESET_VERSION, config.rewards.forbidden_commands),
        "judge_rewards": digest(
            source_digest("rewards.judge", "rewards.schema"),
            judge.model,
            judge.prompt_version,
            judge.rubric_weights,
            # what one request holds changes the prompt a verdict is given for
            judge.max_steps_per_request,
            judge.max_prompt_chars,
            judge.checklist_per_category,
        ),
        "trajectory_rewards": trajectory_reward_version(config.rewards),
        "preference_pairs": digest(
            source_digest("pairs.pairs", "pairs.schema"), vars(PairPolicy.from_config(config.release))
        ),
        "reward_calibration": source_digest("release.calibration", "release.schema"),
        "leaderboard": source_digest("release.leaderboard", "release.schema"),
        "hf_dataset_release": digest(source_digest("release.release"), config.release.name, config.release.license),
    }


def with_code_versions(assets: list, config: ProjectConfig) -> list:
    """`assets` with each one's code version from `code_versions(config)`."""
    from dagster import map_asset_specs

    versions = code_versions(config)
    return map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=versions.get(spec.key.to_user_string())), assets
    )
