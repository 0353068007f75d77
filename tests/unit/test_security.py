"""Safe by default: rebuilt exceptions, private SQLite files, masked passwords, one rate
parser, and message signatures (the pieces; tests/integration/test_security.py runs them
in real processes)."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conveyor import Conveyor, states
from conveyor.backends.base import ResultWrite
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers.base import OutgoingMessage
from conveyor.brokers.sqlite import SqliteBroker
from conveyor.config import Settings, parse_rate, redact_url
from conveyor.exceptions import ConfigurationError, DecodeError, TaskError
from conveyor.message import Message, decode, encode
from conveyor.result import AsyncResult, GroupResult, rebuild_exception
from conveyor.signing import sign, verify
from conveyor.worker import admission

# --- 1. a stored exception is rebuilt only as an Exception ---------------------------------


class Halt(BaseException):
    """A BaseException that is not an Exception, loaded in this process."""


NOT_EXCEPTIONS = [
    "builtins.SystemExit",
    "builtins.KeyboardInterrupt",
    "builtins.GeneratorExit",
    "builtins.BaseException",
    f"{__name__}.Halt",
]


def forged_failure(type_name: str) -> bytes:
    """A FAILURE payload naming ``type_name``, as anyone who can write the store may write it."""
    return orjson.dumps(
        {
            "status": states.FAILURE,
            "result": None,
            "exc_type": type_name,
            "exc_message": "bye",
            "exc_args": [0],
            "traceback": "Traceback (most recent call last):\n  ...\nSystemExit: bye\n",
            "task": "proj.t",
        }
    )


@pytest.fixture
def results(tmp_path: Path) -> Iterator[SqliteResultBackend]:
    backend = SqliteResultBackend(f"sqlite:///{tmp_path / 'results.sqlite3'}")
    yield backend
    backend.close()


@pytest.mark.parametrize("type_name", NOT_EXCEPTIONS)
def test_a_stored_base_exception_is_rebuilt_as_task_error(type_name: str) -> None:
    # Given a stored failure naming a BaseException that is not an Exception
    meta = orjson.loads(forged_failure(type_name))

    # When it is rebuilt
    exc = rebuild_exception(meta)

    # Then it is a TaskError with the remote type, message and traceback: nothing that
    # would get through the caller's `except Exception`
    assert isinstance(exc, TaskError)
    assert (exc.type_name, exc.message) == (type_name, "bye")
    assert exc.remote_traceback is not None
    assert "SystemExit: bye" in exc.remote_traceback


@pytest.mark.parametrize("type_name", NOT_EXCEPTIONS)
def test_get_on_a_forged_system_exit_raises_task_error_not_the_base_exception(
    results: SqliteResultBackend, type_name: str
) -> None:
    # Given a result file holding a forged failure
    task_id = str(uuid.uuid4())
    results.store(ResultWrite(task_id, states.FAILURE, forged_failure(type_name), 60.0))
    result = AsyncResult(task_id, backend=results)

    # When the caller waits for it, reads it, waits asynchronously, or waits for its group
    # Then every way raises (or returns) a TaskError
    with pytest.raises(TaskError, match="bye"):
        result.get(timeout=5)
    assert isinstance(AsyncResult(task_id, backend=results).result, TaskError)
    with pytest.raises(TaskError):
        asyncio.run(AsyncResult(task_id, backend=results).aget(timeout=5))
    with pytest.raises(TaskError):
        GroupResult("g", [AsyncResult(task_id, backend=results)]).get(timeout=5)


def test_an_exception_subclass_is_still_rebuilt_with_its_class(
    results: SqliteResultBackend,
) -> None:
    # Given a stored failure naming an Exception class loaded here
    task_id = str(uuid.uuid4())
    payload = forged_failure("builtins.LookupError")
    results.store(ResultWrite(task_id, states.FAILURE, payload, 60.0))

    # When it is waited for, Then it is raised with its own class
    with pytest.raises(LookupError):
        AsyncResult(task_id, backend=results).get(timeout=5)


# --- 2. SQLite files are private ------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    # The usual umask, which alone would leave a new file readable by everyone.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_a_new_database_and_its_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    # Given no database file yet
    path = tmp_path / "conveyor.sqlite3"
    broker = SqliteBroker(f"sqlite:///{path}")
    try:
        # When the broker creates it and writes (the -wal and -shm files appear)
        broker.publish(OutgoingMessage("m1", "celery", b"{}"))

        # Then all three are readable and writable by their owner only
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        broker.close()


@pytest.mark.usefixtures("umask_022")
def test_an_existing_database_keeps_the_mode_its_operator_chose(tmp_path: Path) -> None:
    # Given an empty database file the operator made group-readable
    path = tmp_path / "shared.sqlite3"
    path.touch(mode=0o640)
    path.chmod(0o640)

    # When conveyor opens and writes it
    broker = SqliteBroker(f"sqlite:///{path}")
    try:
        broker.publish(OutgoingMessage("m1", "celery", b"{}"))

        # Then its mode is unchanged, and SQLite gives the WAL the same
        assert mode(path) == 0o640
        assert mode(Path(f"{path}-wal")) == 0o640
    finally:
        broker.close()


# --- 3. passwords in URLs are masked --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://user:p@ss/w@host/0", "rediss://user:***@host/0"),
        ("redis://host:6379/0?password=pw", "redis://host:6379/0?password=***"),
        ("redis://user@host/0?db=1&password=pw&x=1", "redis://user@host/0?db=1&password=***&x=1"),
        (
            "rediss://h/0?ssl_password=pw&ssl_ca_certs=/ca.pem",
            "rediss://h/0?ssl_password=***&ssl_ca_certs=/ca.pem",
        ),
        ("unix:///tmp/r.sock?db=0&password=p%40w", "unix:///tmp/r.sock?db=0&password=***"),
        ("sqlite:///x.sqlite3?password=pw", "sqlite:///x.sqlite3?password=***"),
        ("amqp://guest:pw@host//", "amqp://guest:***@host//"),
        ("foo://host/?passwd=a;pass=b#f", "foo://host/?passwd=***;pass=***#f"),
        ("redis://host:6379/0?db=1", "redis://host:6379/0?db=1"),
        (
            "Settings(broker_url='redis://h?password=a', result_backend='redis://:b@h')",
            "Settings(broker_url='redis://h?password=***', result_backend='redis://:***@h')",
        ),
    ],
)
def test_redact_url_masks_every_form_of_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_malformed_sqlite_url_error_does_not_echo_its_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"password=\*\*\*") as raised:
        SqliteBroker(f"sqlite:///{tmp_path}/x.sqlite3?password=hunter2hunter2")
    assert "hunter2" not in str(raised.value)


# --- 6. one rate parser ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        (10, (10, 1.0)),
        (2.5, (1, 0.4)),
        ("10", (10, 1.0)),
        ("10/s", (10, 1.0)),
        ("100/m", (100, 60.0)),
        (" 1000 / h ", (1000, 3600.0)),
        ("0.5/s", (1, 2.0)),
    ],
)
def test_celery_rate_forms_are_read(rate: str | float, parsed: tuple[int, float]) -> None:
    assert parse_rate(rate) == pytest.approx(parsed)


BAD_RATES = ["10/sec", "10/min", "10 per second", "0/s", "0", 0, -1, "-1/s", "", "fast", True]


@pytest.mark.parametrize("rate", BAD_RATES)
def test_other_rates_are_refused_naming_the_forms(rate: object) -> None:
    with pytest.raises(ValueError, match="rate limit must be"):
        parse_rate(rate)


@pytest.mark.parametrize("rate", ["10/sec", "0/s", 0])
def test_a_task_with_a_bad_rate_limit_is_refused_where_it_is_defined(rate: object) -> None:
    app = Conveyor("proj", broker="memory://")

    # When a task is defined with a rate the worker could never read
    # Then the definition fails, naming the task and the forms a rate takes
    with pytest.raises(ConfigurationError, match=r"task 'proj\.tick': a rate limit must be"):

        @app.task(name="proj.tick", rate_limit=rate)
        def tick() -> None: ...

    assert "proj.tick" not in app.tasks


@pytest.mark.parametrize("rate", ["10/sec", "0/s", "0"])
def test_a_bad_default_rate_limit_setting_is_refused(rate: str) -> None:
    with pytest.raises(ConfigurationError, match="task_default_rate_limit must be"):
        Settings(task_default_rate_limit=rate)


def test_the_worker_reads_rates_with_the_settings_parser() -> None:
    assert admission.parse_rate is parse_rate


# --- 7. message signatures --------------------------------------------------------------------

NEW = b"n" * 32
OLD = b"o" * 32
RETIRED = b"r" * 32


def body() -> bytes:
    return encode(Message(id="m1", task="proj.add", args=[1, 2]))


def flip_last_digit(signed: bytes) -> bytes:
    """``signed`` with the last hex digit of its signature changed."""
    digit = b"1" if signed[-3:-2] == b"0" else b"0"
    return signed[:-3] + digit + signed[-2:]


def test_a_signed_message_is_verified_and_decodes_as_sent() -> None:
    signed = sign(body(), [NEW, OLD])

    # The signature is one more JSON field; what it covers is what the worker decodes
    assert orjson.loads(signed)["sig"]
    assert verify(signed, [NEW]) == body()
    assert decode(verify(signed, [NEW])).args == [1, 2]


def test_any_key_verifies_so_keys_can_rotate() -> None:
    # Given messages signed with the old key and with the new one
    # When the worker knows both, Then both are verified
    for key in (OLD, NEW):
        assert verify(sign(body(), [key]), [NEW, OLD]) == body()


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (body(), "not signed"),
        (sign(body(), [RETIRED]), "matches none"),
        (sign(body(), [NEW]).replace(b"[1,2]", b"[1,3]"), "matches none"),
        (flip_last_digit(sign(body(), [NEW])), "matches none"),
        (sign(body(), [NEW]) + b" ", "not signed"),
        (b"", "not signed"),
    ],
    ids=["unsigned", "retired-key", "altered-args", "altered-signature", "trailing", "empty"],
)
def test_a_message_no_key_verifies_is_refused(message: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        verify(message, [NEW, OLD])


def test_without_keys_nothing_is_signed_or_required() -> None:
    assert sign(body(), ()) == body()
    assert verify(body(), ()) == body()


def test_signing_keys_are_checked_and_never_shown() -> None:
    secret = "k" * 40
    conf = Settings(message_signing_keys=[secret, secret.encode()])
    assert conf.message_signing_keys == (secret.encode(), secret.encode())
    assert Settings(message_signing_keys=secret).message_signing_keys == (secret.encode(),)
    assert secret not in repr(conf)

    # A key too short to be safe is refused, and the error does not show it either
    with pytest.raises(ConfigurationError, match="32") as short:
        Settings(message_signing_keys=["short-but-secret"])
    assert "short-but-secret" not in str(short.value)
    with pytest.raises(ConfigurationError):
        Settings(message_signing_keys=[secret, 42])
