"""Training the Matroyshka re-ranker: hard-negative groups, teacher scores and the three stages.

Run it as ``python -m train groups|teacher|stage1|stage2|stage3 --config train/configs/<stage>.json``.
"""
