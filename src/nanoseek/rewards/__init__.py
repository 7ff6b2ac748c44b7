"""Rewards: the TRL-style reward protocol (``base``), the rule-based rewards (``rules``), Countdown's
verifier (``countdown``), rewards by name and weighted sums (``registry``), and the math grader
(``grading``, with its fast path ``grading_fast`` and its subprocess pool ``grading_pool``)."""
