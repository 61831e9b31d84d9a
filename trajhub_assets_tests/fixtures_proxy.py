"""Fixtures that start the scripted upstream LLM server and the real LiteLLM proxy."""
