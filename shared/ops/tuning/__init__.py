"""The tuning review: ``policy`` (the pure rules) and ``review`` (evidence, overlay, timer).

The policy lives with its only users rather than lower down: nothing below ops decides a
tunable, and keeping the rules beside the job keeps the ops siblings independent.
"""
