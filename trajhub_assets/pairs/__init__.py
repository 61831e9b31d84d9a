"""preference_pairs: trajectory- and step-level DPO pairs of one instance, in TRL's format."""
