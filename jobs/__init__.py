"""The job system on RQ + Redis: queued runs, workers, live metric streams, cancel and resume.

api (the public surface) · connection, server, paths (where Redis and files are) · keys (the keyspace) ·
registry (runs and workers) · stream (events) · queue (submit and controls) · worker · cli (`codash`).
"""
