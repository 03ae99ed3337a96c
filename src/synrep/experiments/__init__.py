"""Experiments: sweep expansion and one sweep run, the report, the cost planner and the submitit
launcher. The top layer: it may import every other.
"""
