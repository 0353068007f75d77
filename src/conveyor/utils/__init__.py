"""Celery's ``celery.utils`` import paths that tasks use: only ``log.get_task_logger``."""
