"""Branching: a recorded run replayed up to a step, then continued live, several times.

- branches: which recorded call a step stands for, the BranchPolicy that serves the
  recorded prefix (refusing a prefix that does not reproduce) and then the live model,
  `run_branch` (one continuation as a run of its own), storing continuations;
- points: which steps to branch, within the project file's `branching` budgets;
- schema: the branch tables; assets: `branched_trajectories`; cli: `trajhub branch`.
"""
