"""trajhub: turn coding-agent runs into training data, as Dagster assets."""
