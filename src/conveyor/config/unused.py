"""Celery's settings that conveyor accepts without needing them, by section: name -> why.

Setting one is not an error (a Celery config loads unchanged): the value is stored
unchecked, and the worker and beat log one line each at start-up with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final


def _same(reason: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, reason)


def _prefixed(prefix: str, reason: str, *suffixes: str) -> dict[str, str]:
    return _same(reason, *(prefix + suffix for suffix in suffixes))


_RECONNECTS = "conveyor always reconnects to the broker, with backoff."
_NO_EVENTS = "task events go to a capped stream in the broker (`event_stream_max`), not to AMQP."
_NO_CONTROL = "conveyor has no remote-control channel: revokes are kept in the broker."
_BEAT_STATE = "beat keeps its last-run times in the broker, not in a local file."
_DAEMON = (
    "conveyor does not daemonize: run it under systemd, Docker or Kubernetes "
    "(docs/deployment.md); it logs to stderr."
)
_TLS = (
    "TLS options go in the `rediss://` URL, e.g. `?ssl_ca_certs=/path/ca.pem` (docs/security.md)."
)
_RABBITMQ = "RabbitMQ queue types (classic, quorum) do not apply: queues are the broker's own."
_BY_CLASS = "the worker's parts are not replaced by class name (no classes named by strings)."
_SHUTDOWN = (
    "on SIGTERM running tasks get `worker_shutdown_timeout` seconds, then go back to the queue."
)


def _no_backend(what: str, names: Iterable[str]) -> dict[str, str]:
    reason = f"conveyor has no {what} result backend: results live in SQLite or Redis."
    return dict.fromkeys(names, reason)


# fmt: off
BROKER: Final[Mapping[str, str]] = {
    **_same(_RECONNECTS, "broker_connection_retry", "broker_connection_retry_on_startup",
            "broker_connection_max_retries", "broker_channel_error_retry"),
    **_same("one URL serves producers and workers: set `broker_url`.",
            "broker_read_url", "broker_write_url"),
    "broker_transport": "the scheme of `broker_url` chooses the broker (`redis://`, `sqlite://`).",
    **_prefixed("broker_", "Celery 2's broker fields: give the broker as one URL, `broker_url`.",
                "host", "port", "user", "password", "vhost"),
    "broker_failover_strategy": "conveyor connects to one broker URL; there is no failover list.",
    **_same("AMQP heartbeats do not apply: a worker renews the leases of what it holds, so a "
            "lost worker's tasks return within `broker_lease_timeout`.",
            "broker_heartbeat", "broker_heartbeat_checkrate"),
    "broker_use_ssl": _TLS,
    "broker_pool_limit": "each process keeps its own connections, opened as its threads need them.",
    "broker_login_method": "AMQP login methods do not apply: credentials go in `broker_url`.",
    "broker_native_delayed_delivery_queue_type": "RabbitMQ only: conveyor's brokers hold tasks "
                                                 "due later (countdown, eta) themselves.",
}

ROUTING: Final[Mapping[str, str]] = {
    "task_queue_max_priority": "every queue has priorities 0-9.",
    "task_inherit_parent_priority": "a task sent from a task gets its own priority (the call's, "
                                    "its task's, or `task_default_priority`).",
    "worker_direct": "workers have no queue of their own; `-Q` gives a worker a queue of its own.",
    **_same(_RABBITMQ, "task_create_missing_queue_type", "task_default_queue_type"),
    "task_create_missing_queue_exchange_type": "queues have no exchange on the broker; routing "
                                               "keys match as `task_default_exchange_type` says.",
    "task_default_delivery_mode": "messages are always persistent: kept in SQLite or Redis until "
                                  "acknowledged.",
}

TASKS: Final[Mapping[str, str]] = {
    "task_annotations": "not supported: set the option on the task (`@app.task(rate_limit=...)`).",
    "task_compression": "messages are not compressed.",
    "task_protocol": "conveyor has one message format, versioned inside each message.",
    "task_args_repr_function": "the worker does not log task arguments.",
    **_same("a send retries through broker outages for `broker_connection_timeout` seconds, then "
            "raises `BrokerUnavailable`.", "task_publish_retry", "task_publish_retry_policy"),
    "task_remote_tracebacks": "the worker's traceback is always kept: `AsyncResult.traceback`, "
                              "and `TaskError.remote_traceback`.",
    "task_store_errors_even_if_ignored": "a task with `ignore_result` stores nothing, failures "
                                         "included; they are in the worker's log.",
    "task_allow_error_cb_on_chord_header": "a chord whose header fails calls the body's error "
                                           "callbacks once (docs/canvas.md).",
}

MESSAGES: Final[Mapping[str, str]] = {
    "result_accept_content": "results are JSON, as messages are: `accept_content` covers both.",
    **_prefixed("security_", "conveyor signs messages with shared keys, `message_signing_keys` "
                "(docs/security.md); X.509 certificates are not used.",
                "key", "key_password", "certificate", "cert_store", "digest"),
}

RESULTS: Final[Mapping[str, str]] = {
    **_prefixed("result_backend_", "reads and writes of results retry through outages with "
                "backoff, then raise `BackendError`.",
                "always_retry", "max_retries", "base_sleep_between_retries_ms",
                "max_sleep_between_retries_ms"),
    "result_backend_thread_safe": "each process has one backend, shared by its threads.",
    "result_compression": "results are not compressed.",
    "result_extended": "results are always stored with their extended fields.",
    "result_cache_max": "results are not cached in the caller: `get()` reads the backend.",
    **_same("chords are counted in the broker: nothing joins or polls (docs/canvas.md).",
            "result_chord_join_timeout", "result_chord_retry_interval"),
    **_same("results go to the result backend, never as AMQP messages (Celery's `rpc://`).",
            "result_persistent", "result_exchange", "result_exchange_type"),
    "override_backends": "the scheme of `result_backend` chooses the backend.",
    **_prefixed("redis_", "give the Redis backend as one URL, `result_backend`.",
                "host", "port", "db", "username", "password"),
    "redis_backend_use_ssl": _TLS,
    "redis_max_connections": "each process keeps its own connections, opened as its threads "
                             "need them.",
    **_prefixed("redis_", "conveyor sets Redis timeouts, keepalive and health checks itself, "
                "and retries through outages.",
                "socket_connect_timeout", "socket_timeout", "retry_on_timeout",
                "socket_keepalive", "backend_health_check_interval"),
}

OTHER_BACKENDS: Final[Mapping[str, str]] = {
    **_no_backend("SQLAlchemy", ["database_url", "database_engine_options",
                                 "database_short_lived_sessions", "database_table_schemas",
                                 "database_table_names", "database_create_tables_at_setup"]),
    **_no_backend("cache (memcached)", ["cache_backend", "cache_backend_options"]),
    **_no_backend("MongoDB", ["mongodb_backend_settings"]),
    **_no_backend("Cassandra", [f"cassandra_{s}" for s in (
        "servers", "secure_bundle_path", "port", "keyspace", "table", "read_consistency",
        "write_consistency", "entry_ttl", "auth_provider", "auth_kwargs", "options")]),
    **_no_backend("S3", [f"s3_{s}" for s in (
        "access_key_id", "secret_access_key", "bucket", "base_path", "endpoint_url", "region")]),
    **_no_backend("Azure Block Blob", [f"azureblockblob_{s}" for s in (
        "container_name", "base_path", "retry_initial_backoff_sec", "retry_increment_base",
        "retry_max_attempts", "connection_timeout", "read_timeout")]),
    **_no_backend("GCS", [*(f"gcs_{s}" for s in (
        "bucket", "project", "base_path", "ttl", "threadpool_maxsize")), "firestore_project"]),
    **_no_backend("Elasticsearch", [f"elasticsearch_{s}" for s in (
        "retry_on_timeout", "max_retries", "timeout", "save_meta_as_text")]),
    **_no_backend("Couchbase", ["couchbase_backend_settings"]),
    **_no_backend("ArangoDB", ["arangodb_backend_settings"]),
    **_no_backend("CosmosDB", [f"cosmosdbsql_{s}" for s in (
        "database_name", "collection_name", "consistency_level", "max_retry_attempts",
        "max_retry_wait_time")]),
}

WORKER: Final[Mapping[str, str]] = {
    "worker_deduplicate_successful_tasks": "a redelivered task runs again (at-least-once): tasks "
                                           "should be idempotent (docs/tasks.md).",
    "worker_eta_task_limit": "the broker holds tasks due later until they are due; workers never "
                             "hold them.",
    "worker_disable_prefetch": "a worker fetches only for free slots, at most "
                               "`worker_prefetch_multiplier` messages per slot (1 by default).",
    "worker_enable_prefetch_count_reduction": "leases, not connections, decide what a worker "
                                              "holds; prefetch never changes.",
    "worker_lost_wait": "a dead pool process is noticed at once; its task is redelivered "
                        "(`task_reject_on_worker_lost`).",
    "worker_disable_rate_limits": "rate limits hold for all workers together, in the broker: "
                                  "remove them from the tasks to lift them.",
    "worker_state_db": "revokes are kept in the broker (`task_revoke_expires`), not in a file.",
    "worker_timer_precision": "tasks due later wait in the broker, which makes them ready "
                              "when due.",
    **_same(_NO_CONTROL, "worker_enable_remote_control", "worker_pool_restarts"),
    "worker_proc_alive_timeout": "conveyor's prefork pool has no such timeout.",
    "worker_cancel_long_running_tasks_on_connection_loss": "leases decide redelivery, and a worker "
                                "whose lease lapsed can no longer acknowledge the message.",
    "worker_detect_quorum_queues": _RABBITMQ,
    **_same(_SHUTDOWN, "worker_soft_shutdown_timeout", "worker_enable_soft_shutdown_on_idle"),
    "worker_pool_putlocks": "the worker fetches only for free slots; nothing waits on the pool.",
    "worker_autoscaler": "one autoscaler: `worker --autoscale MAX,MIN` "
                         "(`worker_autoscale_keepalive`).",
    **_same(_BY_CLASS, "worker_consumer", "worker_timer", "worker_agent"),
    **_prefixed("worker_", _DAEMON, "logfile", "pidfile", "uid", "gid", "umask", "executable"),
}

LOGGING: Final[Mapping[str, str]] = {
    "worker_hijack_root_logger": "the worker always sets up the root logger (one handler, "
                                 "`--log-format`).",
    "worker_log_color": "log lines are not coloured.",
    "worker_task_log_format": "one format for every line, `worker_log_format`, which may use "
                              "`%(task_name)s` and `%(task_id)s`.",
    **_same("a task's `print()` goes to the worker's stdout as it is, not to the log.",
            "worker_redirect_stdouts", "worker_redirect_stdouts_level"),
}

EVENTS: Final[Mapping[str, str]] = {
    **_prefixed("event_", _NO_EVENTS, "queue_ttl", "queue_expires", "queue_durable",
                "queue_exclusive", "queue_prefix", "exchange", "serializer"),
    **_prefixed("events_", _DAEMON, "logfile", "pidfile", "uid", "gid", "umask", "executable"),
    **_prefixed("control_", _NO_CONTROL, "queue_ttl", "queue_expires", "exchange",
                "queue_durable", "queue_exclusive"),
}

BEAT: Final[Mapping[str, str]] = {
    "beat_scheduler": "conveyor has one scheduler, whose state is in the broker (docs/beat.md).",
    **_same(_BEAT_STATE, "beat_schedule_filename", "beat_sync_every"),
    "beat_cron_starting_deadline": "missed slots follow each entry's `misfire` policy (once, skip "
                                   "or all; docs/beat.md).",
    **_prefixed("beat_", _DAEMON, "logfile", "pidfile", "uid", "gid", "umask", "executable"),
}
# fmt: on
