"""The course kit: assignments cut from the reference code, graded by tests (course/kit.py)."""
