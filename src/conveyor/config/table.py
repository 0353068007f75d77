"""The settings table by section: Celery's name, conveyor's default, check, Celery's default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from conveyor.config import checks as c
from conveyor.config import unused
from conveyor.config.urls import BROKER_URL_ENV, DEFAULT_BROKER_URL, RESULT_BACKEND_ENV

CONVEYOR_ONLY: Final = "(conveyor only)"
"""``Setting.celery_default`` of a setting Celery does not have."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the table. ``validate`` returns the value to store or raises."""

    name: str
    default: Any
    validate: c.Validator
    celery_default: object
    doc: str
    difference: str = ""
    #: Never shown: not in ``repr(app.conf)``, nor in the error about a wrong value.
    secret: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """Settings that belong together, and Celery's of the same kind that conveyor
    accepts without needing them (name -> why)."""

    title: str
    settings: tuple[Setting, ...]
    unused: Mapping[str, str]


_RESULTS_EXPIRE = "results always expire in conveyor (Celery's None, keep forever, is refused)"
_NO_PICKLE = (
    "Celery also offers `pickle`, `yaml` and `msgpack`; conveyor takes only `json` for now."
)

# fmt: off
# Setting(name, conveyor's default, validator, Celery's default, what it does, difference)
_BROKER = (
    Setting("broker_url", None, c.url, "amqp://guest@localhost//",
            f"Where messages go. None: `${BROKER_URL_ENV}`, else `{DEFAULT_BROKER_URL}`.",
            "Celery defaults to RabbitMQ on localhost and reads `$CELERY_BROKER_URL`; conveyor "
            f"defaults to an SQLite file (one machine, no server) and reads `${BROKER_URL_ENV}` "
            "only when the setting is unset."),
    Setting("broker_connection_timeout", 10.0, c.seconds(), 4.0,
            "Seconds to wait for the broker before raising `BrokerUnavailable`.",
            "Celery waits 4 s; conveyor waits 10 s."),
    Setting("broker_lease_timeout", 10.0, c.seconds(), CONVEYOR_ONLY,
            "Seconds a delivered message stays leased to its worker without renewal: a dead "
            "worker's messages return to the queue within this time.",
            "Replaces Celery's `visibility_timeout`: the worker renews the lease while the task "
            "runs, so a long task is never delivered twice."),
    Setting("broker_max_deliveries", 5, c.integer(1), CONVEYOR_ONLY,
            "Deliveries (worker crashes and lost leases included) before a message goes to the "
            "dead-letter queue.",
            "Celery has no limit: with `task_reject_on_worker_lost` a message that kills its "
            "worker is redelivered forever."),
    Setting("broker_dead_letter_max", 10_000, c.integer(1), CONVEYOR_ONLY,
            "Dead letters a queue keeps at most: past that the oldest are dropped (as "
            "workers sweep, every few seconds). `conveyor dead purge` empties them.",
            "Celery has no dead-letter store on Redis; Sidekiq's dead set keeps 10,000."),
    Setting("broker_dead_letter_expires", 180 * 86400.0, c.seconds(), CONVEYOR_ONLY,
            "Seconds (or a timedelta) a dead letter is kept before it is dropped (180 days).",
            "Celery has no dead-letter store on Redis; Sidekiq keeps its dead set 6 months."),
    Setting("broker_transport_options", {}, c.transport_options, {},
            "How to reach the broker's server: for Redis behind Sentinel (a "
            "`sentinel://` URL), `master_name`, the name the sentinels monitor, and "
            "`sentinel_kwargs`, the sentinels' own connection options such as their "
            "`password`. kombu's other Redis options are accepted and logged at start-up "
            "as not needed (`visibility_timeout`: leases are renewed instead).",
            "Celery's `visibility_timeout` is not needed: a long task is never "
            "delivered twice."),
    Setting("broker_replica_acks", 0, c.integer(0), CONVEYOR_ONLY,
            "Redis replicas that must hold each publish, acknowledgement and result write "
            "before it returns (Redis `WAIT`), so that a task whose `delay()` returned "
            "survives a failover. Past `broker_connection_timeout` without them the call "
            "raises `BrokerUnavailable` (the write is on the master).",
            "Celery has no such setting: a failover can drop what the old master "
            "acknowledged."),
    Setting("redis_allow_eviction", False, c.boolean, CONVEYOR_ONLY,
            "Use a Redis whose `maxmemory-policy` is not `noeviction`. Such a server deletes "
            "keys under memory pressure, and queued tasks with them, without an error; "
            "workers and producers refuse it unless this is True (the worker then warns).",
            "Celery does not look at the eviction policy: tasks can vanish silently."),
)

_ROUTING = (
    Setting("task_default_queue", "celery", c.text, "celery",
            "Queue of tasks that no route sends elsewhere; while `task_queues` is unset, the "
            "one queue a worker consumes without `-Q`."),
    Setting("task_queues", None, c.queues, None,
            "The queues a worker consumes without `-Q`: `conveyor.Queue(name, exchange=None, "
            "routing_key=None)` objects, kombu `Queue` objects, or names. None: "
            "`task_default_queue` alone. Routes that give a routing key find their queue here.",
            "Queues are not declared on the broker (a queue exists once used); a queue's "
            "`exchange`, `routing_key` and exchange type only serve routes that give a routing "
            "key and no queue; AMQP options (`durable`, `max_priority`, `queue_arguments`...) "
            "have no effect. Celery 3's dict form is accepted."),
    Setting("task_create_missing_queues", True, c.boolean, True,
            "Let tasks go to, and workers consume, queues not in `task_queues`. False: a send "
            "to an undeclared queue raises `ConfigurationError`, and `worker -Q` naming one "
            "refuses to start.",
            "Celery raises `QueueNotFound` at the send; conveyor raises `ConfigurationError`."),
    Setting("task_routes", None, c.routes, None,
            "Sends tasks to queues by task name (exact, glob, or `re.compile` pattern): a dict, "
            "a list of `(pattern, route)` pairs, a router function, or a list of those. A route "
            "is a queue name or a dict of `queue`, `priority`, or `routing_key`/`exchange` "
            "(the one queue of `task_queues` bound to that key).",
            "Router classes named by strings are not accepted; pass the function. A routing key "
            "must reach exactly one declared queue, else the send raises (AMQP would drop the "
            "message, or copy it to each queue); a route's `queue`, when given, wins over its "
            "routing key."),
    Setting("task_default_exchange", None, c.optional_text, None,
            "Exchange of the queues declared without one. None: `task_default_queue`'s name. "
            "Only compared with the `exchange` a route gives."),
    Setting("task_default_exchange_type", "direct", c.exchange_type, "direct",
            "How a routing key finds a queue whose exchange has no type: `direct` (the queue's "
            "routing key is the same), `topic` (it is a pattern: `*` one word, `#` any words), "
            "`fanout` (any key).",
            "`headers` exchanges are not supported."),
    Setting("task_default_routing_key", None, c.optional_text, None,
            "Routing key of the default queue while `task_queues` is unset, and of routes that "
            "give only an `exchange`. None: `task_default_queue`'s name.",
            "A `Queue` declared without a routing key is found by its own name."),
    Setting("task_default_priority", 0, c.integer(0, 9), None,
            "Priority of tasks that set none: 0-9, a higher number runs first.",
            "The same order on every broker; on Celery with Redis, 0 is the highest priority."),
)

_TASKS = (
    Setting("task_acks_late", True, c.boolean, False,
            "Acknowledge a message after its task finishes, not before it starts.",
            "Celery acknowledges before running (at-most-once: a killed worker loses the task); "
            "conveyor is at-least-once, so tasks should be idempotent."),
    Setting("task_acks_on_failure_or_timeout", True, c.boolean, True,
            "With late acks, acknowledge tasks that failed or timed out too (no redelivery)."),
    Setting("task_reject_on_worker_lost", True, c.boolean, False,
            "Return a task to the queue when its worker process dies mid-task.",
            "Celery acknowledges it and records `WorkerLostError`; conveyor redelivers it, up to "
            "`broker_max_deliveries` times."),
    Setting("task_ignore_result", False, c.boolean, False,
            "Store no results (a task's own `ignore_result` overrides this)."),
    Setting("task_track_started", False, c.boolean, False,
            "Store a STARTED state when a worker begins a task."),
    Setting("task_time_limit", None, c.seconds(optional=True), None,
            "Seconds after which a running task is ended and recorded as a FAILURE with "
            "`TimeLimitExceeded` (acknowledged, not delivered again). Per task: `time_limit=`.",
            "Enforced on every pool (Celery: prefork only); how, per pool: docs/worker.md."),
    Setting("task_soft_time_limit", None, c.seconds(optional=True), None,
            "Seconds after which `SoftTimeLimitExceeded` is raised inside a running task. Per "
            "task: `soft_time_limit=`.",
            "Enforced on every pool (Celery: prefork only); asyncio tasks are cancelled."),
    Setting("task_default_rate_limit", None, c.rate_limit, None,
            "Rate limit of tasks that set none, e.g. `'10/s'`, `'100/m'`."),
    Setting("task_revoke_expires", 86400.0, c.seconds(), CONVEYOR_ONLY,
            "Seconds a revoke is kept in the broker: a revoked task sent to run later than "
            "that would run.",
            "Celery keeps revokes in each worker's memory (lost when all workers restart) "
            "unless a state file is configured per worker."),
    Setting("task_always_eager", False, c.boolean, False,
            "Run tasks in the caller's process instead of sending them (for tests)."),
    Setting("task_eager_propagates", False, c.boolean, False,
            "With eager tasks, re-raise a task's exception in the caller."),
    Setting("task_store_eager_result", False, c.boolean, False,
            "With eager tasks, store results in the result backend."),
)

_MESSAGES = (
    Setting("task_serializer", "json", c.json_only, "json",
            "Serializer of task arguments.", _NO_PICKLE),
    Setting("result_serializer", "json", c.json_only, "json",
            "Serializer of results.", _NO_PICKLE),
    Setting("accept_content", ["json"], c.accept_content, ["json"],
            "Content types a worker accepts.", _NO_PICKLE),
    Setting("message_signing_keys", (), c.signing_keys, CONVEYOR_ONLY,
            "Secret keys (str or bytes, at least 32 bytes each) that sign messages with "
            "HMAC-SHA256: the first signs every message this process sends; a worker runs a "
            "message only if one of them verifies it (unsigned and forged messages go to the "
            "dead letters). Several keys let you rotate them; see docs/security.md. Never "
            "shown in logs, banners or `repr(app.conf)`.",
            "Celery signs with X.509 certificates (`task_serializer='auth'`, `security_key`, "
            "`security_certificate`); conveyor signs JSON messages with shared keys.",
            secret=True),
)

_RESULTS = (
    Setting("result_backend_transport_options", {}, c.transport_options, {},
            "How to reach the result backend's server: `master_name` and `sentinel_kwargs` "
            "for a `sentinel://` URL. Unset while results live beside the messages (no "
            "`result_backend`, or the broker's URL): the broker's options apply."),
    Setting("result_backend", None, c.url, None,
            f"Where results go. None: `${RESULT_BACKEND_ENV}`, else the broker URL.",
            "Celery stores no results unless a backend is set; conveyor stores them beside the "
            "broker by default, each with a TTL (`result_expires`)."),
    Setting("result_expires", 86400.0, c.seconds(none_why=_RESULTS_EXPIRE), 86400.0,
            "Seconds (or a timedelta) each stored result is kept.",
            "Celery accepts None (keep forever); conveyor refuses it: every result expires."),
)

_WORKER = (
    Setting("worker_concurrency", None, c.integer(1, optional=True), None,
            "Tasks a worker runs at once. None: the number of CPUs."),
    Setting("worker_pool", "prefork", c.choice("solo", "threads", "prefork", "asyncio"), "prefork",
            "How a worker runs tasks: `prefork` (processes), `threads`, `asyncio` (`async def` "
            "tasks on one event loop), or `solo` (inline).",
            "`eventlet`, `gevent` and custom pool classes are not offered; `asyncio` is new."),
    Setting("worker_prefetch_multiplier", 1, c.integer(1), 4,
            "A worker holds at most concurrency x this many unacknowledged messages.",
            "Celery's 4 lets one busy worker hoard messages while others idle; 0 (unlimited) "
            "is refused."),
    Setting("worker_max_tasks_per_child", None, c.integer(1, optional=True), None,
            "Tasks a prefork child runs before it is replaced (after its last task, which "
            "finishes normally)."),
    Setting("worker_max_memory_per_child", None, c.integer(1, optional=True), None,
            "KiB of resident memory above which a prefork child is replaced after its task. A "
            "child already above it before its first task keeps running (and says so in the "
            "log) instead of being replaced again and again."),
    Setting("worker_shutdown_timeout", 25.0, c.seconds(zero_ok=True), CONVEYOR_ONLY,
            "On SIGTERM, seconds running tasks may take to finish before they are returned to "
            "the queue (under Kubernetes' 30 s grace period).",
            "Celery's warm shutdown waits for running tasks without a limit."),
    Setting("worker_autoscale_keepalive", 30.0, c.seconds(zero_ok=True), CONVEYOR_ONLY,
            "With `worker --autoscale MAX,MIN`: seconds demand must stay below the pool's size "
            "before the pool shrinks (it grows at once).",
            "Celery's autoscaler has the same 30 s, as a class attribute, not a setting."),
    Setting("worker_heartbeat_file", None, c.path, CONVEYOR_ONLY,
            "A file the worker rewrites every second with its pid and the time its fetch loop "
            "last made progress, and removes when it stops; `conveyor worker-health --file PATH` "
            "reads it for container liveness probes. None: no file.",
            "Celery has no such file: its liveness check, `celery inspect ping`, is a round trip "
            "through the broker."),
    Setting("imports", (), c.modules, (), "Modules a worker imports at start, to register tasks."),
    Setting("include", (), c.modules, (), "More modules a worker imports, after `imports`."),
)

_LOGGING = (
    Setting("worker_log_format", "text", c.log_format,
            "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
            "`text`: one line per record, with the running task's `name[id]`; `json`: one JSON "
            "object per line (time, level, logger, process, message, `task_name`, `task_id`, "
            "`exc_info`) for log shippers. `--log-format` overrides it.",
            "Celery's value is a %-style format string; conveyor accepts one too (for text lines, "
            "with `%(task_name)s` and `%(task_id)s`), and adds `text` and `json`."),
)

_EVENTS = (
    Setting("worker_send_task_events", False, c.boolean, False,
            "Workers write task events (received, started, succeeded, failed, retried, revoked, "
            "rejected) to the broker, for `conveyor events` and the dashboard "
            "(docs/monitoring.md). `conveyor worker -E` turns them on for one worker.",
            "Celery sends events to a fanout exchange that only live receivers see; conveyor "
            "keeps the newest `event_stream_max` in the broker, so a reader that starts late or "
            "restarts reads them too."),
    Setting("task_send_sent_event", False, c.boolean, False,
            "Producers write a `task-sent` event for each task they send: one more broker "
            "round trip per send (per message of a group).",
            "Celery's is the same setting; conveyor writes the event before `delay()` returns."),
    Setting("event_stream_max", 100_000, c.integer(1), CONVEYOR_ONLY,
            "Task events the broker keeps at most: past that the oldest are dropped.",
            "Celery keeps no events: a receiver sees those sent while it runs."),
)

_TIME = (
    Setting("timezone", "UTC", c.timezone, "UTC", "Time zone of `crontab` schedules."),
    Setting("enable_utc", True, c.boolean, True, "Dates in messages are in UTC."),
)

_BEAT = (
    Setting("beat_schedule", {}, c.schedule, {},
            "Periodic tasks that `conveyor beat` and `worker --beat` send: entry name -> "
            "`{task, schedule, args, kwargs, options, misfire}` (docs/beat.md).",
            "Each slot is sent once however many schedulers run; `misfire` is conveyor's; "
            "entries are checked when beat starts."),
    Setting("beat_max_loop_interval", 1.0, c.seconds(), 0,
            "Longest sleep of a beat between two looks at its schedule: it sleeps until the "
            "next slot is due, but at most this long, so added or removed entries and shutdown "
            "are noticed (see docs/beat.md).",
            "Celery's 0 means 300 s for its file scheduler; conveyor's beat keeps no state in "
            "the process, so it can look often."),
)
# fmt: on

SECTIONS: Final = (
    Section("Broker", _BROKER, unused.BROKER),
    Section("Queues and routing", _ROUTING, unused.ROUTING),
    Section("Tasks", _TASKS, unused.TASKS),
    Section("Messages and signing", _MESSAGES, unused.MESSAGES),
    Section("Results", _RESULTS, unused.RESULTS),
    Section("Other result backends", (), unused.OTHER_BACKENDS),
    Section("Worker", _WORKER, unused.WORKER),
    Section("Logging", _LOGGING, unused.LOGGING),
    Section("Events and remote control", _EVENTS, unused.EVENTS),
    Section("Time", _TIME, {}),
    Section("Beat", _BEAT, unused.BEAT),
)
"""The table, in documentation order."""

SETTINGS: Final[Mapping[str, Setting]] = MappingProxyType(
    {s.name: s for section in SECTIONS for s in section.settings}
)
"""Every setting by name, in documentation order."""

IGNORED: Final[Mapping[str, str]] = MappingProxyType(
    {name: why for section in SECTIONS for name, why in section.unused.items()}
)
"""Celery settings conveyor accepts (and logs at start-up) without needing them: name -> why."""
