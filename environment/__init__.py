"""The agent's environment: the task sets (tasks.py), the graders that score answers (graders.py),
and the offline world's scripted expert, the reference teacher (reference_teacher.py).

The core (agent, mps, rl, teacher, score) imports this package; the scripts in bench/ import the core
and are never imported by it. reference_teacher.py alone builds on the core (agent, teacher.Teacher),
and teacher.make_teacher imports it only when it makes a teacher.
"""
