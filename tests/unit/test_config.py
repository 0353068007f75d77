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
    DEFAULT_BROKER_URL,
    IGNORED,
    RESULT_BACKEND_ENV,
    SETTINGS,
    Settings,
    import_object,
    redact_url,
    render_markdown,
)
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
        ("broker_transport_options", IGNORED["broker_transport_options"]),
        (
            "broker_connection_retry_on_startup",
            IGNORED["broker_connection_retry_on_startup"],
        ),
    ]
    assert "visibility_timeout" in conf.ignored_settings()[0][1]


def test_nothing_is_ignored_when_no_ignored_setting_was_set() -> None:
    assert Settings(task_acks_late=False).ignored_settings() == []


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
