"""Snippets of Celery's Routing Tasks user guide, as written there but for the imports
(``kombu`` and ``celery`` -> ``conveyor``): queues declared with ``Queue`` and
``Exchange``, routes as a dict, globs, regular expressions in an ordered list, and a
router function. The broker comes from ``$CONVEYOR_BROKER_URL``.
"""

from __future__ import annotations

import re
from typing import Any

from conveyor import Conveyor, Exchange, Queue, Task

app = Conveyor("guide_routing")

# "Manual routing": a default queue for everything, one for the feed tasks (topic)
app.conf.task_default_queue = "default"
app.conf.task_queues = (
    Queue("default", routing_key="task.#"),
    Queue("feed_tasks", routing_key="feed.#"),
    # "Exchanges": two queues bound to one direct exchange
    Queue("videos", Exchange("media"), routing_key="media.video"),
    Queue("images", Exchange("media"), routing_key="media.image"),
    Queue("web"),
    Queue("media"),
    Queue("compress"),
)
app.conf.task_default_exchange = "tasks"
app.conf.task_default_exchange_type = "topic"
app.conf.task_default_routing_key = "task.default"


def route_task(name, args, kwargs, options, task=None, **kw):  # type: ignore[no-untyped-def]
    """The guide's router function."""
    if name == "myapp.tasks.compress_video":
        return {"queue": "compress"}


app.conf.task_routes = (
    route_task,
    {"feeds.tasks.import_feed": {"queue": "feed_tasks", "routing_key": "feed.import"}},
    [
        ("web.tasks.*", {"queue": "web"}),
        (re.compile(r"(video|image)\.tasks\..*"), {"queue": "media"}),
    ],
)


def _where(self: Task[..., Any], *args: Any) -> str | None:
    return self.request.queue


import_feed = app.task(name="feeds.tasks.import_feed", bind=True)(_where)
render_page = app.task(name="web.tasks.render", bind=True)(_where)
resize_image = app.task(name="image.tasks.resize", bind=True)(_where)
compress_video = app.task(name="myapp.tasks.compress_video", bind=True)(_where)
add = app.task(name="tasks.add", bind=True)(_where)
