"""Trajectories in and out of trajhub: mini-vela raw calls, Harbor's ATIF and OpenAI/TRL
records imported as runs of the store, and stored conversations exported as ATIF or OpenAI/TRL."""
