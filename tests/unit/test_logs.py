"""Worker log lines: the JSON formatter, the text formatter, and their settings."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.exceptions import ConfigurationError
from conveyor.task import Request, request_context
from conveyor.worker.logs import (
    TEXT_FORMAT,
    JsonFormatter,
    TaskFormatter,
    as_record_line,
    formatter,
    task_extra,
)

#: 2024-05-06 07:08:09.123 UTC
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC).timestamp()
REQUEST = Request(id="4f1c", task="shop.tasks.add")


def record(
    msg: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    """A record as ``logging.getLogger("shop.tasks").log(...)`` makes it, created at CREATED."""
    made = logging.getLogger("shop.tasks").makeRecord(
        "shop.tasks", level, __file__, 1, msg, args, exc_info, extra=extra
    )
    made.created = CREATED
    made.msecs = 123.0
    return made


def as_json(made: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(made)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_json_line_outside_a_task_has_the_standard_keys_and_no_task() -> None:
    # Given a record logged outside any task
    made = record()

    # When it is formatted as JSON
    line = as_json(made)

    # Then it is one object: UTC ISO 8601 time with milliseconds, level, logger, process, message
    assert line == {
        "time": "2024-05-06T07:08:09.123Z",
        "level": "INFO",
        "logger": "shop.tasks",
        "process": made.processName,
        "pid": made.process,
        "message": "hello world",
    }


def test_json_line_inside_a_task_carries_its_name_and_id() -> None:
    # Given a task running in this thread
    with request_context(REQUEST):
        # When a line is logged
        line = as_json(record())

    # Then it names the task and its id
    assert (line["task_name"], line["task_id"]) == ("shop.tasks.add", "4f1c")


def test_json_line_about_a_task_from_another_thread_carries_it_through_extra() -> None:
    # Given a worker line about a task that runs elsewhere, with its runtime
    made = record(
        "%s succeeded",
        ("shop.tasks.add[4f1c]",),
        extra=task_extra("shop.tasks.add", "4f1c", runtime=0.25),
    )

    # When it is formatted as JSON
    line = as_json(made)

    # Then the task's name, id and runtime are fields of their own
    assert line["task_name"] == "shop.tasks.add"
    assert line["task_id"] == "4f1c"
    assert line["runtime"] == 0.25


def test_json_extra_fields_are_kept_but_never_replace_a_standard_key() -> None:
    # Given extra fields, one named like a standard key and one that JSON cannot encode
    made = record(extra={"time": "yesterday", "user": 7, "path": Path("/tmp/x")})

    # When it is formatted as JSON
    line = as_json(made)

    # Then the standard key wins, the others are there (repr when not JSON)
    assert line["time"] == "2024-05-06T07:08:09.123Z"
    assert line["user"] == 7
    assert line["path"] == repr(Path("/tmp/x"))


def test_json_line_of_a_logged_exception_carries_the_traceback_on_one_line() -> None:
    # Given a record logged with an exception
    try:
        raise KeyError("missing")
    except KeyError:
        made = record("could not", (), level=logging.ERROR, exc_info=sys.exc_info())

    # When it is formatted as JSON
    line = as_json(made)

    # Then exc_info holds the formatted traceback, and the message stays the message
    assert line["message"] == "could not"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("KeyError: 'missing'")


def test_json_message_with_newlines_and_non_ascii_stays_one_line() -> None:
    # Given a message over several lines with non-ASCII text
    made = record("line one\nline two: %s", ("café",))

    # When it is formatted as JSON
    line = JsonFormatter().format(made)

    # Then it is one line that decodes to the same text
    assert "\n" not in line
    assert json.loads(line)["message"] == "line one\nline two: café"


def test_text_line_names_the_running_task_and_only_then() -> None:
    # Given the worker's text formatter
    text = TaskFormatter(TEXT_FORMAT)

    # When one line is logged in a task and one outside
    with request_context(REQUEST):
        inside = text.format(record())
    outside = text.format(record())

    # Then only the first carries name[id]
    assert inside.endswith(" INFO/MainProcess shop.tasks.add[4f1c]] hello world")
    assert outside.endswith(" INFO/MainProcess] hello world")


def test_a_celery_format_string_gets_task_name_and_task_id() -> None:
    # Given Celery's task log format as the worker's log format
    text = formatter("%(levelname)s %(task_name)s[%(task_id)s]: %(message)s")

    # When lines are logged in a task and outside one
    with request_context(REQUEST):
        inside = text.format(record())
    outside = text.format(record())

    # Then the task fields are filled in, with Celery's ??? outside a task
    assert inside == "INFO shop.tasks.add[4f1c]: hello world"
    assert outside == "INFO ???[???]: hello world"


def test_the_banner_is_one_json_object_in_json_format_and_untouched_in_text() -> None:
    # Given the banner's lines
    banner = "conveyor 0.1.0 worker w1@host\n  tasks:\n    . shop.tasks.add"

    # When it is printed in each format
    as_text = as_record_line(banner, "text")
    as_object = json.loads(as_record_line(banner, "json"))

    # Then text shows it as is, JSON as one INFO object carrying it whole
    assert as_text == banner
    assert (as_object["level"], as_object["message"]) == ("INFO", banner)


@pytest.mark.parametrize(
    "value", ["text", "json", "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"]
)
def test_worker_log_format_takes_text_json_or_a_celery_format_string(value: str) -> None:
    # When the setting is given a format conveyor knows, or Celery's kind
    conf = Settings(worker_log_format=value)

    # Then it is stored as given
    assert conf.worker_log_format == value


@pytest.mark.parametrize("value", ["jsn", "%(nosuchfield", 1, None])
def test_worker_log_format_refuses_anything_else(value: object) -> None:
    # When the setting is given something that is no format
    # Then it is refused, naming what it takes
    with pytest.raises(ConfigurationError, match="worker_log_format must be 'text', 'json'"):
        Settings(worker_log_format=value)


def test_worker_heartbeat_file_takes_a_str_or_a_path_and_defaults_to_none() -> None:
    # Given the default settings and a Path
    # When the heartbeat file is set from a Path
    conf = Settings(worker_heartbeat_file=Path("/tmp/conveyor-worker.json"))

    # Then it is stored as a str, and it is off by default
    assert conf.worker_heartbeat_file == "/tmp/conveyor-worker.json"
    assert Settings().worker_heartbeat_file is None
    with pytest.raises(ConfigurationError, match="None or a file path"):
        Settings(worker_heartbeat_file="")
