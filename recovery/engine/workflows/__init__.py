"""Multi-step workflows: a small scheduler on top of Celery tasks (see README "Workflows").

`store` keeps runs and steps in PostgreSQL and decides, with the run row locked, what runs
next; `execute` runs one step (an api_call through the same pipeline as a job); `refs`
resolves `${input...}` and `${steps...}` references; `runs` starts, replays and shows runs.
"""
