"""Thin Celery task modules: adapters from messages to the recovery engine."""
