"""The agent's environment: the task sets (tasks.py) and the graders that score answers (graders.py).

The core (agent, mps, rl, teacher, score) imports this package; the scripts in bench/ import the core
and are never imported by it.
"""
