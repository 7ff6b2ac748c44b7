"""Rewards: the TRL-style reward protocol, the rule-based rewards, the graders."""
