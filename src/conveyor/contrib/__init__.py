"""Integrations with other tools, each enabled by one call (docs/integrations.md).

* ``conveyor.contrib.opentelemetry``: ``ConveyorInstrumentor().instrument()`` traces
  publishing and running tasks, one trace from the sender to the worker
  (``pip install 'conveyor[opentelemetry]'``).
* ``conveyor.contrib.sentry``: ``sentry_sdk.init(..., integrations=[ConveyorIntegration()])``
  reports failed tasks with their context (``pip install 'conveyor[sentry]'``).
* ``conveyor.contrib.django``: Celery's Django fix-up (the worker's database
  connections handled as Django handles a request's); ``conveyor worker`` turns it
  on when ``DJANGO_SETTINGS_MODULE`` is set.

Each module imports its tool; this package imports none, so conveyor itself needs
none of them. They are built on Celery's signals (``conveyor.signals``), as the
tools' own Celery integrations are; the Django fix-up, which belongs to its app, on
the app's hooks (``conveyor.hooks``).
"""
