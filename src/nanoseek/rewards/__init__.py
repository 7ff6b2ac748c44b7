"""Rewards: the TRL-style reward protocol (``base``), the rule-based rewards (``rules``), Countdown's
verifier (``countdown``), rewards by name and weighted sums (``registry``), and the math grader
(``grading``, with its fast path ``grading_fast``, its subprocess pool ``grading_pool`` and the
pool's worker script ``grading_child``)."""
