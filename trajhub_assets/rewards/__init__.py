"""Rewards: the auditable rule layer, the LLM judge and the trajectory reward.

Plain functions over merged conversations, task records and run outcomes; the assets
read their inputs from the store, call these and write the declared tables.
"""
