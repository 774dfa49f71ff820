"""codash's front door: the `codash` command (codash.cli) and the supervisor behind `codash up` (codash.up).

It sits above the three layers (trainer ← jobs ← app) and is the only package that knows all of them.
"""
