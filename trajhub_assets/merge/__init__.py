"""merged_trajectories: rebuild whole conversations from a run's per-call records."""
