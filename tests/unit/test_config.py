"""Settings: the table's defaults, validation on every write, the readers, the generated docs."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from conveyor.config import (
    BROKER_URL_ENV,
    CONVEYOR_ONLY,
    DEFAULT_BROKER_URL,
    IGNORED,
    OLD_NAMES,
    RESULT_BACKEND_ENV,
    SETTINGS,
    Settings,
    import_object,
    redact_url,
    render_markdown,
)
from conveyor.config.checks import IGNORED_TRANSPORT_OPTIONS
from conveyor.exceptions import ConfigurationError

DOCS = Path(__file__).parents[2] / "docs" / "settings.md"
TYPO = r"unknown setting 'task_acks_lat'; did you mean 'task_acks_late'\?"

WriteModule = Callable[[str, str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write an importable module into tmp_path; forget it from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _no_conveyor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BROKER_URL_ENV, raising=False)
    monkeypatch.delenv(RESULT_BACKEND_ENV, raising=False)


# --- defaults --------------------------------------------------------------------------------


def test_defaults_that_differ_from_celery_are_the_safe_ones() -> None:
    # Given a fresh Settings
    conf = Settings()
    # Then acks are late, prefetch is fair, results expire after a day
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.result_expires == 86400.0
    assert SETTINGS["task_acks_late"].celery_default is False
    assert SETTINGS["worker_prefetch_multiplier"].celery_default == 4


def test_every_default_passes_its_own_validator() -> None:
    for setting in SETTINGS.values():
        assert setting.validate(setting.default) == setting.default, setting.name


def test_every_default_that_differs_from_celery_says_how() -> None:
    for setting in SETTINGS.values():
        if setting.default != setting.celery_default:
            assert setting.difference, setting.name


def test_each_settings_object_has_its_own_mutable_defaults() -> None:
    # Given two apps' settings
    one, two = Settings(), Settings()
    # When one mutates its beat_schedule in place
    one.beat_schedule["tick"] = {"task": "t"}
    # Then the other, and the table, are untouched
    assert two.beat_schedule == {}
    assert SETTINGS["beat_schedule"].default == {}


# --- access ----------------------------------------------------------------------------------


def test_attribute_and_item_access_are_the_same_setting() -> None:
    conf = Settings()
    conf.task_acks_late = False
    assert conf["task_acks_late"] is False
    conf["task_default_queue"] = "high"
    assert conf.task_default_queue == "high"
    assert "task_default_queue" in conf
    assert "nope" not in conf
    assert conf.get("nope", 7) == 7


def test_iteration_and_len_cover_every_setting() -> None:
    conf = Settings()
    assert list(conf) == list(SETTINGS)
    assert len(conf) == len(SETTINGS)


def test_deleting_a_setting_resets_it_to_its_default() -> None:
    # Given a changed setting
    conf = Settings(task_acks_late=False)
    # When it is deleted, by item or by attribute
    del conf["task_acks_late"]
    conf.worker_pool = "solo"
    del conf.worker_pool
    # Then it is back at its default and no longer a change
    assert conf.task_acks_late is True
    assert conf.worker_pool == "prefork"
    assert conf.changes() == {}


def test_changes_lists_only_what_was_set() -> None:
    conf = Settings(worker_concurrency=4)
    conf.beat_schedule["tick"] = {"task": "t"}  # mutated in place, not assigned
    assert conf.changes() == {"worker_concurrency": 4, "beat_schedule": {"tick": {"task": "t"}}}


def test_reading_an_unknown_attribute_suggests_the_close_name() -> None:
    with pytest.raises(AttributeError, match=TYPO):
        _ = Settings().task_acks_lat


def test_repr_hides_passwords() -> None:
    conf = Settings(broker_url="redis://user:s3cret@redis:6379/0")
    assert "s3cret" not in repr(conf)
    assert "redis://user:***@redis:6379/0" in repr(conf)


# --- typos -----------------------------------------------------------------------------------


def test_typo_in_attribute_set_names_the_close_setting() -> None:
    with pytest.raises(ConfigurationError, match=TYPO):
        Settings().task_acks_lat = True


def test_typo_in_item_set_names_the_close_setting() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError, match=TYPO):
        conf["task_acks_lat"] = True


def test_typo_in_update_names_the_close_setting() -> None:
    with pytest.raises(ConfigurationError, match=TYPO):
        Settings().update({"task_acks_lat": True})


def test_typo_in_keyword_arguments_names_the_close_setting() -> None:
    with pytest.raises(ConfigurationError, match=TYPO):
        Settings(task_acks_lat=True)


def test_unknown_name_with_nothing_close_points_to_the_docs() -> None:
    with pytest.raises(ConfigurationError, match=r"'zzz'.*see docs/settings\.md"):
        Settings(zzz=1)


def test_a_failed_update_sets_nothing() -> None:
    # Given an update with one valid and one invalid entry
    conf = Settings()
    with pytest.raises(ConfigurationError):
        conf.update(task_acks_late=False, worker_pool="gevent")
    # Then the valid one was not applied either
    assert conf.task_acks_late is True


# --- types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("task_acks_late", "false", "task_acks_late must be True or False, got 'false' (str)"),
        ("task_acks_late", 0, "task_acks_late must be True or False, got 0 (int)"),
        ("worker_concurrency", True, "worker_concurrency must be None or an int >= 1"),
        ("worker_prefetch_multiplier", 0, "worker_prefetch_multiplier must be an int >= 1"),
        ("task_default_priority", 10, "task_default_priority must be an int from 0 to 9"),
        ("worker_pool", "gevent", "worker_pool must be one of 'solo', 'threads', 'prefork'"),
        ("broker_lease_timeout", "10", "broker_lease_timeout must be a number of seconds > 0"),
        ("broker_lease_timeout", 0, "broker_lease_timeout must be a number of seconds > 0"),
        ("task_default_rate_limit", "fast", "task_default_rate_limit must be None, tasks per"),
        ("imports", [1], "imports must be a tuple of module names"),
        ("broker_url", "localhost", "broker_url must be None or a URL"),
        ("timezone", "Europe/Londn", "timezone must be an IANA time zone name"),
        ("task_routes", ["pkg.routers.Router"], "router classes named by strings"),
    ],
)
def test_wrong_type_names_setting_expectation_and_value(
    name: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings()[name] = value
    assert expected in str(excinfo.value)


@pytest.mark.parametrize("name", ["task_serializer", "result_serializer"])
def test_pickle_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ConfigurationError, match="pickle is never enabled by default"):
        Settings()[name] = "pickle"


def test_accept_content_takes_only_json() -> None:
    conf = Settings(accept_content=("application/json",))
    assert conf.accept_content == ["json"]
    with pytest.raises(ConfigurationError, match="pickle is never enabled by default"):
        conf.accept_content = ["json", "pickle"]


def test_result_expires_none_is_refused_because_results_always_expire() -> None:
    with pytest.raises(ConfigurationError, match="results always expire in conveyor"):
        Settings(result_expires=None)


def test_seconds_settings_accept_timedelta_and_store_float_seconds() -> None:
    conf = Settings(result_expires=timedelta(hours=1), task_time_limit=30)
    assert conf.result_expires == 3600.0
    assert conf.task_time_limit == 30.0
    assert isinstance(conf.task_time_limit, float)


def test_a_bare_string_for_imports_means_one_module() -> None:
    assert Settings(imports="proj.tasks").imports == ("proj.tasks",)


def test_a_router_function_is_accepted_for_task_routes() -> None:
    def route(name: str, *args: object, **kwargs: object) -> dict[str, str]:
        return {"queue": "q"}

    assert Settings(task_routes=route).task_routes is route
    assert Settings(task_routes=({"a": {"queue": "q"}}, route)).task_routes[1] is route


# --- Celery's forms --------------------------------------------------------------------------


def test_uppercase_names_in_update_map_to_the_lowercase_setting() -> None:
    conf = Settings()
    conf.update(TASK_ACKS_LATE=False, BROKER_URL="memory://")
    assert conf.task_acks_late is False
    assert conf.broker_url == "memory://"


def test_uppercase_typo_is_suggested_in_uppercase() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'TASK_ACKS_LATE'"):
        Settings().update(TASK_ACKS_LAT=False)


def test_ignored_celery_settings_are_stored_and_reported_with_reasons() -> None:
    # Given Celery settings conveyor does not need
    conf = Settings(broker_transport_options={"visibility_timeout": 3600})
    conf.update(BROKER_CONNECTION_RETRY_ON_STARTUP=True)
    # Then they are readable, and reported with their reasons for the start-up log
    assert conf.broker_transport_options == {"visibility_timeout": 3600}
    assert conf.ignored_settings() == [
        (
            "broker_connection_retry_on_startup",
            IGNORED["broker_connection_retry_on_startup"],
        ),
        (
            "broker_transport_options['visibility_timeout']",
            IGNORED_TRANSPORT_OPTIONS["visibility_timeout"],
        ),
    ]
    assert "lease" in conf.ignored_settings()[1][1]


def test_nothing_is_ignored_when_no_ignored_setting_was_set() -> None:
    assert Settings(task_acks_late=False).ignored_settings() == []


# --- every Celery setting --------------------------------------------------------------------

#: Every setting of Celery 5's "Configuration and defaults" reference, by its sections, and
#: the few more its code and its old-names table know (``broker_transport``, ``redis_host``...).
CELERY_SETTINGS = (
    # general, time and date
    "accept_content", "result_accept_content", "enable_utc", "timezone",
    # tasks
    "task_annotations", "task_compression", "task_protocol", "task_serializer",
    "task_args_repr_function", "task_publish_retry", "task_publish_retry_policy",
    # task execution
    "task_always_eager", "task_eager_propagates", "task_store_eager_result",
    "task_remote_tracebacks", "task_ignore_result", "task_store_errors_even_if_ignored",
    "task_track_started", "task_time_limit", "task_allow_error_cb_on_chord_header",
    "task_soft_time_limit", "task_acks_late", "task_acks_on_failure_or_timeout",
    "task_reject_on_worker_lost", "task_default_rate_limit",
    # result backend
    "result_backend", "result_backend_always_retry",
    "result_backend_max_sleep_between_retries_ms",
    "result_backend_base_sleep_between_retries_ms", "result_backend_max_retries",
    "result_backend_thread_safe", "result_backend_transport_options", "result_serializer",
    "result_compression", "result_extended", "result_expires", "result_cache_max",
    "result_chord_join_timeout", "result_chord_retry_interval", "override_backends",
    "result_persistent", "result_exchange", "result_exchange_type",
    # database, cache, MongoDB, Redis backends
    "database_url", "database_create_tables_at_setup", "database_engine_options",
    "database_short_lived_sessions", "database_table_schemas", "database_table_names",
    "cache_backend", "cache_backend_options", "mongodb_backend_settings",
    "redis_backend_health_check_interval", "redis_backend_use_ssl", "redis_max_connections",
    "redis_socket_connect_timeout", "redis_socket_timeout", "redis_retry_on_timeout",
    "redis_socket_keepalive", "redis_host", "redis_port", "redis_db", "redis_username",
    "redis_password",
    # Cassandra, S3, Azure, GCS, Elasticsearch, Couchbase, ArangoDB, CosmosDB backends
    "cassandra_servers", "cassandra_secure_bundle_path", "cassandra_port",
    "cassandra_keyspace", "cassandra_table", "cassandra_read_consistency",
    "cassandra_write_consistency", "cassandra_entry_ttl", "cassandra_auth_provider",
    "cassandra_auth_kwargs", "cassandra_options",
    "s3_access_key_id", "s3_secret_access_key", "s3_bucket", "s3_base_path",
    "s3_endpoint_url", "s3_region",
    "azureblockblob_container_name", "azureblockblob_base_path",
    "azureblockblob_retry_initial_backoff_sec", "azureblockblob_retry_increment_base",
    "azureblockblob_retry_max_attempts", "azureblockblob_connection_timeout",
    "azureblockblob_read_timeout",
    "gcs_bucket", "gcs_project", "gcs_base_path", "gcs_ttl", "gcs_threadpool_maxsize",
    "firestore_project",
    "elasticsearch_retry_on_timeout", "elasticsearch_max_retries", "elasticsearch_timeout",
    "elasticsearch_save_meta_as_text",
    "couchbase_backend_settings", "arangodb_backend_settings",
    "cosmosdbsql_database_name", "cosmosdbsql_collection_name",
    "cosmosdbsql_consistency_level", "cosmosdbsql_max_retry_attempts",
    "cosmosdbsql_max_retry_wait_time",
    # message routing
    "task_queues", "task_routes", "task_queue_max_priority", "task_default_priority",
    "task_inherit_parent_priority", "worker_direct", "task_create_missing_queues",
    "task_create_missing_queue_type", "task_create_missing_queue_exchange_type",
    "task_default_queue", "task_default_queue_type", "task_default_exchange",
    "task_default_exchange_type", "task_default_routing_key", "task_default_delivery_mode",
    # broker
    "broker_url", "broker_read_url", "broker_write_url", "broker_failover_strategy",
    "broker_heartbeat", "broker_heartbeat_checkrate", "broker_use_ssl", "broker_pool_limit",
    "broker_connection_timeout", "broker_connection_retry",
    "broker_connection_retry_on_startup", "broker_connection_max_retries",
    "broker_channel_error_retry", "broker_login_method",
    "broker_native_delayed_delivery_queue_type", "broker_transport_options",
    "broker_transport", "broker_host", "broker_port", "broker_user", "broker_password",
    "broker_vhost",
    # worker
    "imports", "include", "worker_deduplicate_successful_tasks", "worker_concurrency",
    "worker_prefetch_multiplier", "worker_eta_task_limit", "worker_disable_prefetch",
    "worker_enable_prefetch_count_reduction", "worker_lost_wait",
    "worker_max_tasks_per_child", "worker_max_memory_per_child",
    "worker_disable_rate_limits", "worker_state_db", "worker_timer_precision",
    "worker_enable_remote_control", "worker_proc_alive_timeout",
    "worker_cancel_long_running_tasks_on_connection_loss", "worker_detect_quorum_queues",
    "worker_soft_shutdown_timeout", "worker_enable_soft_shutdown_on_idle",
    # events, remote control
    "worker_send_task_events", "task_send_sent_event", "event_queue_ttl",
    "event_queue_expires", "event_queue_durable", "event_queue_exclusive",
    "event_queue_prefix", "event_exchange", "event_serializer", "events_logfile",
    "events_pidfile", "events_uid", "events_gid", "events_umask", "events_executable",
    "control_queue_ttl", "control_queue_expires", "control_exchange",
    "control_queue_durable", "control_queue_exclusive",
    # logging, security
    "worker_hijack_root_logger", "worker_log_color", "worker_log_format",
    "worker_task_log_format", "worker_redirect_stdouts", "worker_redirect_stdouts_level",
    "security_key", "security_key_password", "security_certificate", "security_cert_store",
    "security_digest",
    # custom component classes
    "worker_pool", "worker_pool_putlocks", "worker_pool_restarts", "worker_autoscaler",
    "worker_consumer", "worker_timer", "worker_agent", "worker_logfile", "worker_pidfile",
    "worker_uid", "worker_gid", "worker_umask", "worker_executable",
    # beat
    "beat_schedule", "beat_scheduler", "beat_schedule_filename", "beat_sync_every",
    "beat_max_loop_interval", "beat_cron_starting_deadline", "beat_logfile", "beat_pidfile",
    "beat_uid", "beat_gid", "beat_umask", "beat_executable",
)  # fmt: skip

#: Celery's table of old names -> new names (its "New lowercase settings" section).
CELERY_OLD_NAMES = {
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ENABLE_UTC": "enable_utc",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
    "CELERY_TIMEZONE": "timezone",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "BROKER_URL": "broker_url",
    "BROKER_TRANSPORT": "broker_transport",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry",
    "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy",
    "BROKER_HEARTBEAT": "broker_heartbeat",
    "BROKER_LOGIN_METHOD": "broker_login_method",
    "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE": "broker_native_delayed_delivery_queue_type",
    "BROKER_POOL_LIMIT": "broker_pool_limit",
    "BROKER_USE_SSL": "broker_use_ssl",
    "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options",
    "CASSANDRA_COLUMN_FAMILY": "cassandra_table",
    "CASSANDRA_ENTRY_TTL": "cassandra_entry_ttl",
    "CASSANDRA_KEYSPACE": "cassandra_keyspace",
    "CASSANDRA_PORT": "cassandra_port",
    "CASSANDRA_READ_CONSISTENCY": "cassandra_read_consistency",
    "CASSANDRA_SERVERS": "cassandra_servers",
    "CASSANDRA_WRITE_CONSISTENCY": "cassandra_write_consistency",
    "CASSANDRA_OPTIONS": "cassandra_options",
    "S3_ACCESS_KEY_ID": "s3_access_key_id",
    "S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
    "S3_BUCKET": "s3_bucket",
    "S3_BASE_PATH": "s3_base_path",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "S3_REGION": "s3_region",
    "CELERY_COUCHBASE_BACKEND_SETTINGS": "couchbase_backend_settings",
    "CELERY_ARANGODB_BACKEND_SETTINGS": "arangodb_backend_settings",
    "CELERY_MONGODB_BACKEND_SETTINGS": "mongodb_backend_settings",
    "CELERY_EVENT_QUEUE_EXPIRES": "event_queue_expires",
    "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl",
    "CELERY_EVENT_QUEUE_DURABLE": "event_queue_durable",
    "CELERY_EVENT_QUEUE_EXCLUSIVE": "event_queue_exclusive",
    "CELERY_EVENT_QUEUE_PREFIX": "event_queue_prefix",
    "CELERY_EVENT_SERIALIZER": "event_serializer",
    "CELERY_REDIS_DB": "redis_db",
    "CELERY_REDIS_HOST": "redis_host",
    "CELERY_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "CELERY_REDIS_USERNAME": "redis_username",
    "CELERY_REDIS_PASSWORD": "redis_password",
    "CELERY_REDIS_PORT": "redis_port",
    "CELERY_REDIS_BACKEND_USE_SSL": "redis_backend_use_ssl",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    # Celery's table says result_compression; its code (and so conveyor) says task_compression
    "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_RESULT_EXCHANGE": "result_exchange",
    "CELERY_RESULT_EXCHANGE_TYPE": "result_exchange_type",
    "CELERY_RESULT_EXPIRES": "result_expires",
    "CELERY_RESULT_PERSISTENT": "result_persistent",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_RESULT_DBURI": "database_url",  # "use result_backend instead"
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    # the table says database_db_names, a setting that does not exist
    "CELERY_RESULT_DB_TABLE_NAMES": "database_table_names",
    "CELERY_SECURITY_CERTIFICATE": "security_certificate",
    "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_SECURITY_KEY": "security_key",
    "CELERY_SECURITY_KEY_PASSWORD": "security_key_password",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT": "task_acks_on_failure_or_timeout",
    "CELERY_TASK_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_COMPRESSION": "task_compression",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_CREATE_MISSING_QUEUE_TYPE": "task_create_missing_queue_type",
    "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE": "task_create_missing_queue_exchange_type",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_QUEUE_TYPE": "task_default_queue_type",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_EAGER_PROPAGATES": "task_eager_propagates",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_QUEUES": "task_queues",
    "CELERY_ROUTES": "task_routes",
    "CELERY_SEND_SENT_EVENT": "task_send_sent_event",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERYD_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_TASK_TRACK_STARTED": "task_track_started",
    "CELERY_TASK_REJECT_ON_WORKER_LOST": "task_reject_on_worker_lost",
    "CELERYD_TIME_LIMIT": "task_time_limit",
    "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER": "task_allow_error_cb_on_chord_header",
    "CELERYD_AGENT": "worker_agent",
    "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_CONSUMER": "worker_consumer",
    "CELERY_WORKER_DIRECT": "worker_direct",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color",
    "CELERY_WORKER_LOG_FORMAT": "worker_log_format",
    "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_POOL": "worker_pool",
    "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_ETA_TASK_LIMIT": "worker_eta_task_limit",
    "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION": "worker_enable_prefetch_count_reduction",
    "CELERYD_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERYD_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERYD_STATE_DB": "worker_state_db",
    "CELERY_WORKER_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_TIMER": "worker_timer",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision",
    "CELERYD_DETECT_QUORUM_QUEUES": "worker_detect_quorum_queues",
    # old names in Celery's code, beside those of its table
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERYD_LOG_FORMAT": "worker_log_format",
}


def _a_value(name: str) -> object:
    """A valid value for ``name``: its default where conveyor implements it."""
    return SETTINGS[name].default if name in SETTINGS else "anything"


@pytest.mark.parametrize("name", CELERY_SETTINGS)
def test_every_celery_setting_is_accepted(name: str) -> None:
    # Given a setting of Celery's reference, lower case, in capitals and in a Django module
    conf = Settings()
    conf[name] = _a_value(name)
    conf.update({name.upper(): _a_value(name)})
    conf.from_object({f"CELERY_{name.upper()}": _a_value(name)}, namespace="CELERY")
    # Then it is implemented here, or stored and reported at start-up with a reason
    assert name in SETTINGS or (name, IGNORED[name]) in conf.ignored_settings()


def test_no_setting_is_celerys_that_celery_does_not_have() -> None:
    # Every "accepted, no effect" name is Celery's, and every conveyor-only one says so
    assert set(IGNORED) <= set(CELERY_SETTINGS)
    for setting in SETTINGS.values():
        assert (setting.name in CELERY_SETTINGS) == (setting.celery_default != CONVEYOR_ONLY)


def test_every_unused_setting_gives_a_reason() -> None:
    for name, reason in IGNORED.items():
        assert reason.endswith("."), name
        assert len(reason) > 20, name


@pytest.mark.parametrize(("old", "new"), sorted(CELERY_OLD_NAMES.items()))
def test_celerys_old_names_set_the_new_setting(old: str, new: str) -> None:
    # Given Celery's old name of a setting, in a config module or on app.conf
    conf = Settings()
    conf.from_object({old: _a_value(new)})
    other = Settings()
    other[old] = _a_value(new)
    # Then it set the new setting, which reads by either name
    assert new in conf.changes() or new in dict(conf.ignored_settings())
    assert new in other.changes() or new in dict(other.ignored_settings())
    assert OLD_NAMES[old] == new
    assert conf[old] == conf[new] == _a_value(new)


def test_an_old_name_sets_the_setting_with_its_check() -> None:
    conf = Settings(CELERYD_CONCURRENCY=4, CELERY_ALWAYS_EAGER=True)
    assert (conf.worker_concurrency, conf.task_always_eager) == (4, True)
    assert conf.CELERYD_CONCURRENCY == 4
    with pytest.raises(ConfigurationError, match="CELERYD_PREFETCH_MULTIPLIER must be an int"):
        conf.update(CELERYD_PREFETCH_MULTIPLIER="4")


def test_a_typo_in_an_old_name_suggests_the_old_name() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"unknown setting 'CELERYD_CONCURENCY'; did you mean 'CELERYD_CONCURRENCY'\?",
    ):
        Settings().from_object({"CELERYD_CONCURENCY": 4})


def test_a_name_that_is_neither_celerys_nor_conveyors_fails() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'task_queues'"):
        Settings(task_queue=["a"])
    with pytest.raises(ConfigurationError, match="did you mean 'CELERY_QUEUES'"):
        Settings().update(CELERY_QUEUS=["a"])


def test_one_setting_by_two_names_with_two_values_is_refused() -> None:
    # Given the old and the new name of one setting, with different values
    conf = Settings()
    with pytest.raises(ConfigurationError, match="BROKER_URL and broker_url both set broker_url"):
        conf.from_object({"BROKER_URL": "memory://a", "broker_url": "memory://b"})
    # Then nothing was set; the same value twice is fine
    assert conf.changes() == {}
    conf.from_object({"BROKER_URL": "memory://a", "broker_url": "memory://a"})
    assert conf.broker_url == "memory://a"


def test_an_old_name_in_capitals_of_a_setting_names_that_setting() -> None:
    # OLD_NAMES is built by Celery's rules (building it refuses a clash); capitals never mislead
    for old, name in OLD_NAMES.items():
        assert old.lower() not in (*SETTINGS, *IGNORED) or old.lower() == name, old


# --- from_object -----------------------------------------------------------------------------


def test_from_object_reads_a_module_and_skips_its_imports_and_helpers(
    write_module: WriteModule,
) -> None:
    # Given a config module with imports, a helper and a router function
    write_module(
        "cfg_plain",
        "from __future__ import annotations\n"
        "import os\n"
        "from datetime import timedelta\n"
        "from typing import TYPE_CHECKING\n"
        "def route(name, args, kwargs, options, task=None, **kw):\n"
        "    return {'queue': 'q'}\n"
        "broker_url = 'memory://'\n"
        "RESULT_EXPIRES = timedelta(minutes=5)\n"
        "task_routes = route\n"
        "_private = 1\n",
    )
    conf = Settings()
    # When it is read
    conf.from_object(import_object("cfg_plain"))
    # Then the settings are set and everything else ignored
    assert conf.broker_url == "memory://"
    assert conf.result_expires == 300.0
    assert callable(conf.task_routes)
    assert set(conf.changes()) == {"broker_url", "result_expires", "task_routes"}


def test_from_object_typo_in_a_module_is_an_error(write_module: WriteModule) -> None:
    write_module("cfg_typo", "task_acks_lat = True\n")
    with pytest.raises(ConfigurationError, match=TYPO):
        Settings().from_object(import_object("cfg_typo"))


def test_from_object_reads_a_dict_and_a_class() -> None:
    class Config:
        task_acks_late = False

    conf = Settings()
    conf.from_object({"worker_concurrency": 2})
    conf.from_object(Config)
    assert (conf.worker_concurrency, conf.task_acks_late) == (2, False)


def test_namespace_reads_only_prefixed_names_from_a_django_settings_module(
    write_module: WriteModule,
) -> None:
    # Given a Django-style settings module
    write_module(
        "cfg_django",
        "DEBUG = True\n"
        "SECRET_KEY = 'x'\n"
        "CELERY_BROKER_URL = 'memory://'\n"
        "CELERY_TASK_ACKS_LATE = False\n"
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True\n",
    )
    conf = Settings()
    # When read with the CELERY namespace
    conf.from_object(import_object("cfg_django"), namespace="CELERY")
    # Then only CELERY_* names are read, prefix stripped
    assert conf.broker_url == "memory://"
    assert conf.task_acks_late is False
    assert [name for name, _ in conf.ignored_settings()] == ["broker_connection_retry_on_startup"]
    assert set(conf.changes()) == {
        "broker_url",
        "task_acks_late",
        "broker_connection_retry_on_startup",
    }


def test_namespace_typo_names_the_full_prefixed_name(write_module: WriteModule) -> None:
    write_module("cfg_django_typo", "CELERY_TASK_ACKS_LAT = False\n")
    with pytest.raises(
        ConfigurationError,
        match=r"unknown setting 'CELERY_TASK_ACKS_LAT'; did you mean 'CELERY_TASK_ACKS_LATE'\?",
    ):
        Settings().from_object(import_object("cfg_django_typo"), namespace="CELERY")


def test_namespace_wrong_type_names_the_prefixed_name() -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_TASK_ACKS_LATE must be True or False"):
        Settings().from_object({"CONVEYOR_TASK_ACKS_LATE": "no"}, namespace="CONVEYOR")


def test_namespace_also_reads_celerys_old_names_as_celery_does() -> None:
    # Given a Django settings object with old-style names beside the namespaced ones
    class DjangoSettings:
        DEBUG = True
        DATABASE_URL = "postgres://db/app"  # the capitals of database_url: not Celery's old name
        CELERY_TASK_DEFAULT_QUEUE = "django"
        CELERY_ALWAYS_EAGER = True  # old name, written with the CELERY_ prefix
        BROKER_URL = "memory://"  # old name, without it
        CELERYD_CONCURRENCY = 3

    conf = Settings()
    # When it is read with the CELERY namespace
    conf.from_object(DjangoSettings, namespace="CELERY")
    # Then the namespaced and the old names are read, and nothing else
    assert conf.changes() == {
        "task_default_queue": "django",
        "task_always_eager": True,
        "broker_url": "memory://",
        "worker_concurrency": 3,
    }


def test_namespace_reads_no_other_attribute_of_the_object() -> None:
    # Given a settings object whose unrelated attributes raise when read (Django's can)
    class Settings_:
        CELERY_TASK_ACKS_LATE = False

        @property
        def SECRET_KEY(self) -> str:
            raise RuntimeError("The SECRET_KEY setting must not be empty.")

    conf = Settings()
    conf.from_object(Settings_(), namespace="CELERY")
    assert conf.task_acks_late is False


def test_namespace_reads_a_real_django_settings_object() -> None:
    # Given Django's own settings object, configured as a project's settings.py would be
    from django.conf import LazySettings

    django_settings = LazySettings()
    django_settings.configure(
        CELERY_BROKER_URL="memory://",
        CELERY_TASK_QUEUES=["high", "low"],
        CELERY_TASK_CREATE_MISSING_QUEUES=False,
        CELERY_BROKER_POOL_LIMIT=10,
    )
    conf = Settings()
    # When it is read with the CELERY namespace
    conf.from_object(django_settings, namespace="CELERY")
    # Then the CELERY_ settings are set, and Django's own are not settings
    assert conf.declared_queues().names == ["high", "low"]
    assert conf.task_create_missing_queues is False
    assert conf.broker_url == "memory://"
    assert [name for name, _ in conf.ignored_settings()] == ["broker_pool_limit"]


# --- import_object ---------------------------------------------------------------------------


def test_import_object_accepts_module_colon_and_dotted_forms(write_module: WriteModule) -> None:
    write_module("cfg_forms", "class Config:\n    task_acks_late = False\n")
    module = import_object("cfg_forms")
    assert import_object("cfg_forms:Config") is module.Config  # type: ignore[attr-defined]
    assert import_object("cfg_forms.Config") is module.Config  # type: ignore[attr-defined]
    assert import_object("cfg_forms:Config.task_acks_late") is False


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "expected 'pkg.module'"),
        ("pkg mod", "expected 'pkg.module'"),
        ("cfg_errors:", "expected 'pkg.module'"),
        ("no_such_module_xyz", "No module named 'no_such_module_xyz'"),
        ("no_such_pkg_xyz.mod", "No module named 'no_such_pkg_xyz'"),
        ("cfg_errors:missing", "'cfg_errors' has no attribute 'missing'"),
        ("cfg_errors.missing", "'cfg_errors' has no attribute 'missing'"),
    ],
)
def test_import_object_errors_are_configuration_errors(
    write_module: WriteModule, path: str, message: str
) -> None:
    write_module("cfg_errors", "x = 1\n")
    with pytest.raises(ConfigurationError, match="cannot import") as excinfo:
        import_object(path)
    assert message in str(excinfo.value)


def test_import_object_reports_a_failing_import_inside_the_module(
    write_module: WriteModule,
) -> None:
    write_module("cfg_broken", "import no_such_dependency_xyz\n")
    with pytest.raises(ConfigurationError, match="No module named 'no_such_dependency_xyz'"):
        import_object("cfg_broken")


# --- URLs and the environment ----------------------------------------------------------------


def test_broker_url_defaults_to_the_sqlite_file_and_backend_follows_it() -> None:
    conf = Settings()
    assert conf.broker_url_resolved() == DEFAULT_BROKER_URL == "sqlite:///conveyor.sqlite3"
    assert conf.result_backend_resolved() == DEFAULT_BROKER_URL


def test_env_vars_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings created before the environment changes
    conf = Settings()
    monkeypatch.setenv(BROKER_URL_ENV, "redis://redis:6379/0")
    # Then the broker comes from the env var, and the backend follows the broker
    assert conf.broker_url_resolved() == "redis://redis:6379/0"
    assert conf.result_backend_resolved() == "redis://redis:6379/0"
    monkeypatch.setenv(RESULT_BACKEND_ENV, "redis://redis:6379/1")
    assert conf.result_backend_resolved() == "redis://redis:6379/1"


def test_explicit_settings_win_over_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_URL_ENV, "redis://from-env/0")
    monkeypatch.setenv(RESULT_BACKEND_ENV, "redis://from-env/1")
    conf = Settings(broker_url="memory://", result_backend="sqlite:///results.sqlite3")
    assert conf.broker_url_resolved() == "memory://"
    assert conf.result_backend_resolved() == "sqlite:///results.sqlite3"


def test_an_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_URL_ENV, "")
    assert Settings().broker_url_resolved() == DEFAULT_BROKER_URL


def test_a_malformed_env_var_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_URL_ENV, "redis-host")
    with pytest.raises(ConfigurationError, match=r"\$CONVEYOR_BROKER_URL must be"):
        Settings().broker_url_resolved()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p@ss@host/0", "rediss://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///conveyor.sqlite3", "sqlite:///conveyor.sqlite3"),
        ("['redis://:a@h1', 'redis://:b@h2']", "['redis://:***@h1', 'redis://:***@h2']"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_wrong_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings(broker_url=["redis://:hunter2@host/0"])
    assert "hunter2" not in str(excinfo.value)


# --- docs ------------------------------------------------------------------------------------


def test_committed_docs_match_the_table() -> None:
    # Regenerate with: make docs
    assert DOCS.read_text() == render_markdown()


def test_docs_list_every_setting_and_every_ignored_setting() -> None:
    text = render_markdown()
    for name in (*SETTINGS, *IGNORED):
        assert f"`{name}`" in text


def test_from_object_skips_functions_held_by_an_object() -> None:
    conf = Settings()
    conf.from_object(SimpleNamespace(task_acks_late=False, helper=lambda: None))
    assert conf.changes() == {"task_acks_late": False}
