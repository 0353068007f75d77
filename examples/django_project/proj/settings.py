"""Django settings for proj: the usual ones, and conveyor's as Celery's guide writes
them (``CELERY_``-prefixed, read by ``app.config_from_object(..., namespace="CELERY")``
in proj/celery.py). Everything that differs between machines comes from the
environment."""

import os
from pathlib import Path

from conveyor import Queue  # Celery projects import it from kombu: same arguments

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-only-for-this-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", BASE_DIR / "db.sqlite3"),
        # The web server's threads and the worker's processes write at once: WAL lets
        # readers go on while one writes, IMMEDIATE takes the write lock at BEGIN (no
        # "database is locked" half-way through a transaction), and a writer waits up
        # to 20 s for its turn.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # 0 (Django's default): a connection lasts one request, and with conveyor's
        # Django fix-up one task, as Celery's does.
        "CONN_MAX_AGE": 0,
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- conveyor (Celery's names, CELERY_ prefix) ---------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A child process is replaced after this many tasks (leaky libraries): every new
# child must start with no database connection of its parent's.
CELERY_WORKER_MAX_TASKS_PER_CHILD = int(os.environ.get("CELERY_WORKER_MAX_TASKS_PER_CHILD", 100))
# Two queues, so that a slow report never waits behind order confirmations (run a
# worker per queue with -Q, or one worker for both: it consumes every queue declared
# here unless -Q says otherwise).
CELERY_TASK_DEFAULT_QUEUE = "orders"
CELERY_TASK_QUEUES = (
    Queue("orders", routing_key="orders"),
    Queue("reports", routing_key="reports"),
)
CELERY_TASK_ROUTES = {"orders.tasks.build_report": {"queue": "reports"}}
# A task sent to a queue not declared above is an error, not a queue nobody consumes.
CELERY_TASK_CREATE_MISSING_QUEUES = False
