# The tutorial's app/celery_app.py, with one change: the import.
# (Deploying a Celery Worker with Redis as Broker: see docs/deployment.md)
import os

from conveyor import Celery

app = Celery(
    "myapp",
    broker=os.environ["REDIS_URL"],
    backend=os.environ.get("RESULT_BACKEND", os.environ["REDIS_URL"]),
)
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task
def send_welcome_email(user_id):
    return f"welcome mail sent to user {user_id}"
