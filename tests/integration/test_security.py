"""Safe by default, in real processes: what a stored result may do to its reader, who may
read the SQLite files, where passwords may appear, how TLS and credential mistakes fail,
which rate limits a task may declare, and which messages a signing worker runs.

Workers load ``apps.security_tasks`` where a test needs its settings (signing keys, a
beat entry, a rate limit), else ``apps.tasks``. Tests that bring their own broker URL
(a wrong password, a TLS port, a closed port) start their processes with ``spawn`` and
``cli`` below rather than the fixtures that run each test on both brokers.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apps.executions import Executions
from harness import HERE, StartWorker, WorkerProcess, run_conveyor, wait_until, workers_of

from conveyor import Conveyor, states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import DeadLetter, OutgoingMessage
from conveyor.message import Message, encode
from conveyor.signing import sign
from redis_server import RedisServer, free_port

SECURITY_APP = "apps.security_tasks"
#: What the test app reads from the environment, as the ``app`` fixture sets it.
APP_ENV = {
    "CONVEYOR_TEST_LEASE_TIMEOUT": "2.0",
    "CONVEYOR_TEST_MAX_DELIVERIES": "5",
    "CONVEYOR_TEST_ACKS_LATE": "1",
}
Measure = Any  # pytest's ``record_property`` fixture: ``(name, value) -> None``
Spawn = Callable[..., WorkerProcess]


def env_for(url: str, **extra: str) -> dict[str, str]:
    """The environment of a process of the test app on ``url`` (results there too)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("CONVEYOR_RESULT_BACKEND", "CONVEYOR_APP")
    }
    env.update(APP_ENV)
    env.update(extra)
    env["CONVEYOR_BROKER_URL"] = url
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(url, *worker_args, app=..., **env)`` starts ``conveyor worker`` on ``url``;
    killed at teardown, its log shown if the test failed."""
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, app: str = "apps.tasks", **env: str) -> WorkerProcess:
        number = len(started) + 1
        argv = [*args, "-n", f"s{number}@%h", "-l", "info"]
        worker = WorkerProcess(argv, env_for(url, **env), tmp_path / f"s{number}.log", app=app)
        started.append(worker)
        return worker

    yield start
    for number, worker in enumerate(started, 1):
        worker.cleanup()
        print(f"----- worker s{number} (exit code {worker.proc.returncode}) -----")
        print(worker.stderr_text())


def cli(
    url: str, *args: str, app: str = "apps.tasks", **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run one ``conveyor`` command on ``url``; its outcome and how long it took."""
    began = time.monotonic()
    done = run_conveyor(*args, env=env_for(url, **env), app=app, timeout=90)
    return done, time.monotonic() - began


def call_add(url: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``conveyor call apps.tasks.add`` on ``url``: one message published."""
    return cli(url, "call", "apps.tasks.add", "--args", "[1, 2]", **env)


def dead_letters(app: Conveyor, count: int) -> list[DeadLetter]:
    """The dead letters, once there are ``count`` of them."""

    def probe() -> list[DeadLetter]:
        found = app.broker.dead_letters()
        return found if len(found) >= count else []

    return wait_until(probe, 30, f"{count} dead letter(s)")


# -- 1. a stored failure is data: it cannot stop its reader ---------------------------------

READER = """
import sys
from apps import tasks
for task_id in sys.argv[1:]:
    try:
        tasks.app.AsyncResult(task_id).get(timeout=10)
    except Exception as exc:
        print(type(exc).__name__, getattr(exc, "type_name", ""), flush=True)
print("still serving")
"""


def test_a_forged_system_exit_in_the_result_store_does_not_stop_the_caller(app: Conveyor) -> None:
    # Given failures in the result store naming BaseExceptions, as anyone who can write
    # to it may forge them
    forged = {}
    for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        task_id = str(uuid.uuid4())
        payload = (
            b'{"status":"FAILURE","result":null,"exc_type":"builtins.%s","exc_message":"bye",'
            b'"exc_args":["bye"],"traceback":"Traceback ...\\n%s: bye\\n","task":"t"}'
        ) % (name.encode(), name.encode())
        app.backend.store(ResultWrite(task_id, states.FAILURE, payload, 60.0))
        forged[task_id] = name

    # When a web process waits for each of them
    reader = subprocess.run(
        [sys.executable, "-c", READER, *forged],
        cwd=HERE,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then each get() raised a TaskError naming the remote type, and the process went on
    assert reader.returncode == 0, reader.stdout + reader.stderr
    assert reader.stdout.splitlines() == [
        *(f"TaskError builtins.{name}" for name in forged.values()),
        "still serving",
    ]


# -- 2. SQLite files are private ------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (inherited by the processes a test starts): alone, it would leave
    new files readable by every user of the machine."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.brokers("sqlite")
@pytest.mark.usefixtures("umask_022")
def test_a_worker_creates_the_sqlite_files_readable_by_their_owner_only(
    app: Conveyor, broker_url: str, start_worker: StartWorker
) -> None:
    # Given no database file yet
    path = Path(broker_url.removeprefix("sqlite:///"))
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert not path.exists()

    # When a worker creates it, and a task goes through it
    start_worker("-P", "threads", "-c", "1").wait_ready()
    wait_until(lambda: all(f.exists() for f in files), 15, "the worker's database files")
    assert app.send_task("apps.tasks.add", [1, 2]).get(timeout=20) == 3

    # Then the database, its WAL and its shared-memory file are its owner's alone
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert modes == {f.name: 0o600 for f in files}


# -- 3 and 4. passwords are masked everywhere; TLS works, and says so when it cannot --------


def test_workers_over_tls_and_a_unix_socket_mask_every_password_in_their_banners(
    redis_acl_server: RedisServer, spawn: Spawn
) -> None:
    # Given the ACL server, reached over TLS (user:password@, and the certificate checks
    # spelled as Celery spells them) and over its unix socket (?username=...&password=...)
    assert redis_acl_server.acl_user is not None
    user, password = redis_acl_server.acl_user
    redis_acl_server.flush()
    tls_url = redis_acl_server.tls_url + "&ssl_cert_reqs=CERT_REQUIRED"
    unix_url = redis_acl_server.unix_url
    assert password in tls_url
    assert f"password={password}" in unix_url

    # When a worker starts on each and runs a task sent over the same URL
    for url in (tls_url, unix_url):
        worker = spawn(url, "-P", "threads", "-c", "1").wait_ready()
        producer = Conveyor("producer", broker=url)
        try:
            assert producer.send_task("apps.tasks.add", [20, 22]).get(timeout=20) == 42
        finally:
            producer.close()
        worker.terminate()
        assert worker.wait(20) == 0

        # Then its banner and log show the URL with the password masked, never the password
        log = worker.stderr_text()
        assert password not in log
        assert redis_acl_server.password not in log
        shown = "\n".join(line for line in log.splitlines() if "broker:" in line)
        if url is tls_url:
            assert f"rediss://{user}:***@127.0.0.1:{redis_acl_server.tls_port}/0" in shown
        else:
            assert "password=***" in shown


def secret_urls(tmp_path: Path, password: str) -> dict[str, str]:
    closed = free_port()
    return {
        "unknown scheme, userinfo": f"amqp://guest:{password}@localhost//",
        "unknown scheme, query": f"amqp://localhost//?password={password}",
        "sqlite, query": f"sqlite:///{tmp_path}/x.sqlite3?password={password}",
        "redis down, userinfo": f"redis://:{password}@127.0.0.1:{closed}/0",
        "redis down, query": f"redis://127.0.0.1:{closed}/0?password={password}",
        "rediss down, user and query": f"rediss://u@127.0.0.1:{closed}/0?password={password}",
        "unix socket missing, query": f"unix://{tmp_path}/none.sock?db=0&password={password}",
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown scheme, userinfo",
        "unknown scheme, query",
        "sqlite, query",
        "redis down, userinfo",
        "redis down, query",
        "rediss down, user and query",
        "unix socket missing, query",
    ],
)
def test_a_cli_error_about_a_url_never_shows_its_password(tmp_path: Path, case: str) -> None:
    # Given a URL holding a password, that cannot work
    password = secrets.token_hex(8)
    url = secret_urls(tmp_path, password)[case]

    # When a command sends a task through it
    done, _ = call_add(url, CONVEYOR_TEST_CONNECTION_TIMEOUT="1")

    # Then it fails, showing the URL with the password masked
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert password not in output
    assert "***" in output


def test_a_worker_logging_through_an_outage_never_shows_the_password(spawn: Spawn) -> None:
    # Given a worker whose broker URL carries a password, and no server at its address
    password = secrets.token_hex(8)
    url = f"redis://127.0.0.1:{free_port()}/0?password={password}"

    # When it tries to reach the broker, and gives up on each try after a second
    worker = spawn(url, "-P", "threads", "-c", "1", CONVEYOR_TEST_CONNECTION_TIMEOUT="1")
    wait_until(lambda: "unavailable after" in worker.stderr_text(), 30, "an outage logged")

    # Then its banner, warnings and errors show the URL with the password masked
    log = worker.stderr_text()
    assert password not in log
    assert "password=***" in log


def test_rediss_to_a_plain_redis_port_fails_within_the_timeout_naming_tls(
    redis_server: RedisServer, record_property: Measure
) -> None:
    # Given a rediss:// URL to the port of a Redis that speaks no TLS
    redis_server.reset()
    url = f"rediss://127.0.0.1:{redis_server.port}/0"

    # When a command sends a task through it, allowed 10 s to reach the broker
    done, took = call_add(url, CONVEYOR_TEST_CONNECTION_TIMEOUT="10")
    record_property("measured: rediss:// to a plain port fails after (s)", round(took, 2))

    # Then it fails within that time (not after a retry of each slow handshake), saying why
    assert done.returncode == 1, done.stdout + done.stderr
    assert "speaks plain Redis, not TLS" in done.stderr
    assert took < 9.5


DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def documented_acl_rule(password: str) -> list[str]:
    """The arguments of docs/security.md's ``ACL SETUSER conveyor ...``, after the name."""
    [line] = [
        line for line in DOCS.read_text().splitlines() if line.startswith("ACL SETUSER conveyor ")
    ]
    return [f">{password}" if arg == ">CHANGE-ME" else arg for arg in line.split()[3:]]


def test_a_worker_runs_every_feature_as_the_documented_least_privileged_acl_user(
    redis_acl_server: RedisServer, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a Redis user made with exactly the rule docs/security.md gives
    name, password = f"least-{secrets.token_hex(4)}", secrets.token_hex(16)
    with redis_acl_server.client() as admin:
        admin.flushall()
        admin.execute_command("ACL", "LOG", "RESET")
        admin.execute_command("ACL", "SETUSER", name, "reset", *documented_acl_rule(password))
    url = f"redis://{name}:{password}@127.0.0.1:{redis_acl_server.port}/0"

    # When a worker with beat, a rate limit and a concurrency cap runs as that user, and a
    # producer (also that user) sends tasks, a chain, a retry, a unique task, a revoke, a
    # message for no task, and reads the dead letters and the queue's counts
    executions = Executions(tmp_path / "executions.log")
    worker = spawn(
        url,
        *("--beat", "-E", "-P", "threads", "-c", "2"),
        app=SECURITY_APP,
        CONVEYOR_TEST_BEAT_RECORD="beat",
        CONVEYOR_TEST_RATE_LIMIT="100/s",
        CONVEYOR_TEST_EXECUTIONS=str(executions.path),
    ).wait_ready()
    producer = Conveyor("producer", broker=url)

    @producer.task(name="apps.tasks.add")
    def add(x: int, y: int) -> int: ...

    try:
        sent = [producer.send_task("apps.tasks.add", [1, 2])]
        sent.append((add.s(1, 2) | add.s(10)).apply_async())
        sent.append(producer.send_task("apps.security_tasks.retry_once", ["again"]))
        sent.append(producer.send_task("apps.security_tasks.limited"))
        sent.append(producer.send_task("apps.security_tasks.capped", ["one"]))
        sent.append(add.apply_async((2, 2), unique_key=f"acl-{secrets.token_hex(4)}"))
        assert [r.get(timeout=30) for r in sent] == [3, 13, "again", None, "one", 4]
        later = producer.send_task("apps.tasks.add", [5, 5], countdown=60)
        producer.revoke(later.id)
        assert later.state == states.REVOKED
        stray = producer.send_task("no.such.task")
        [dead] = dead_letters(producer, 1)
        assert dead.id == stray.id
        assert producer.broker.drop_dead(stray.id)
        assert producer.broker.stats(["celery"])[0].dead == 0
        # ... asks the worker over the control channel and reads events and metrics
        [(_, pong)] = (producer.control.inspect(timeout=5).ping() or {}).items()
        assert pong == {"ok": "pong"}
        wait_until(lambda: producer.broker.stream_tail("events", 1), 10, "a task event")
        wait_until(lambda: producer.broker.counters("tasks|"), 10, "task counters")
        # ... and its beat sends a task of its own
        mine = {r.id for r in sent} | {r.parent.id for r in sent if r.parent is not None}
        wait_until(
            lambda: any(e.task_id not in mine for e in executions.events("start")),
            30,
            "a task sent by beat",
        )
    finally:
        producer.close()
    worker.terminate()
    assert worker.wait(30) == 0

    # Then Redis refused nothing, and the worker logged no refusal either
    with redis_acl_server.client() as admin:
        refused = [e for e in admin.acl_log() if e.get("username") == name]
    assert refused == []
    log = worker.stderr_text()
    assert "NOPERM" not in log
    assert "could not read maxmemory-policy" not in log


# -- 5. refused credentials are not retried ------------------------------------------------


def refused_logins(server: RedisServer) -> dict[str, str]:
    assert server.acl_user is not None
    user, password = server.acl_user
    address = f"127.0.0.1:{server.port}/0"
    return {
        "wrong password": f"redis://{user}:not-{password}@{address}",
        "unknown user": f"redis://nobody:{password}@{address}",
        "no credentials (NOAUTH)": f"redis://{address}",
        "wrong password in the query": f"redis://{address}?username={user}&password=x{password}",
    }


@pytest.mark.parametrize(
    "case",
    ["wrong password", "unknown user", "no credentials (NOAUTH)", "wrong password in the query"],
)
def test_refused_credentials_fail_at_once_naming_authentication(
    redis_acl_server: RedisServer, case: str, record_property: Measure
) -> None:
    # Given credentials the ACL server refuses
    assert redis_acl_server.acl_user is not None
    password = redis_acl_server.acl_user[1]
    url = refused_logins(redis_acl_server)[case]

    # When a command sends a task with them, allowed 10 s to reach the broker
    done, took = call_add(url, CONVEYOR_TEST_CONNECTION_TIMEOUT="10")
    record_property(f"measured: {case} refused after (s)", round(took, 2))

    # Then it fails at once (not after 10 s of retries), naming authentication, no password
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "authentication failed" in done.stderr
    assert password not in output
    assert redis_acl_server.password not in output
    assert took < 8


def test_a_worker_with_a_wrong_password_says_so_at_once_without_showing_it(
    redis_acl_server: RedisServer, spawn: Spawn
) -> None:
    # Given a worker logging in to the ACL server with a wrong password
    url = refused_logins(redis_acl_server)["wrong password"]
    wrong = url.split(":")[2].split("@")[0]

    # When it starts, Then within seconds its log says authentication failed
    worker = spawn(url, "-P", "threads", "-c", "1", CONVEYOR_TEST_CONNECTION_TIMEOUT="10")
    wait_until(lambda: "authentication failed" in worker.stderr_text(), 9, "the refusal logged")
    assert wrong not in worker.stderr_text()


# -- 6. a rate limit is checked where it is written ------------------------------------------


def test_a_worker_whose_task_declares_an_unreadable_rate_limit_refuses_to_start(
    tmp_path: Path, spawn: Spawn
) -> None:
    # Given an app with a task declared with rate_limit="10/sec" (Celery reads only s, m, h)
    url = f"sqlite:///{tmp_path / 'conveyor.sqlite3'}"

    # When a worker of it starts
    worker = spawn(url, "-P", "solo", app=SECURITY_APP, CONVEYOR_TEST_RATE_LIMIT="10/sec")

    # Then it stops at once with an error naming the task and the forms a rate takes,
    # instead of running and dead-lettering every message of that task
    assert worker.wait(30) == 1
    log = worker.stderr_text()
    assert "Error: task 'apps.security_tasks.limited': a rate limit must be" in log
    assert "'10/s', '100/m', '1000/h'" in log


# -- 7. signed messages ---------------------------------------------------------------------


@pytest.fixture
def start_security_worker(start_worker: StartWorker) -> StartWorker:
    return workers_of(start_worker, SECURITY_APP)


def test_a_signing_worker_runs_signed_messages_and_dead_letters_the_rest(
    app: Conveyor,
    broker_url: str,
    start_security_worker: StartWorker,
    executions: Executions,
) -> None:
    # Given a worker that knows a new key and the old one it replaces (a rotation)
    new, old, retired = (secrets.token_hex(32) for _ in range(3))
    worker = start_security_worker(
        "-P", "threads", "-c", "2", env={"CONVEYOR_TEST_SIGNING_KEYS": f"{new},{old}"}
    ).wait_ready()
    producers = {
        key: Conveyor("producer", broker=broker_url, message_signing_keys=[key])
        for key in (new, old, retired)
    }
    try:
        # When producers send tasks signed with the new key and with the old one, a chain
        # (its second step sent by the worker) and a task that retries (sent again by it)
        signer = producers[new]
        assert signer.send_task("apps.tasks.add", [1, 2]).get(timeout=20) == 3
        assert producers[old].send_task("apps.tasks.add", [2, 3]).get(timeout=20) == 5
        first = signer.signature("apps.tasks.add", (1, 2))
        second = signer.signature("apps.tasks.add", (10,))
        assert (first | second).apply_async().get(timeout=20) == 13
        retried = signer.send_task("apps.security_tasks.retry_once", ["again"])
        assert retried.get(timeout=20) == "again"

        # ... and an unsigned message, one signed with a retired key, and a forged one (a
        # signed message whose arguments were changed after signing) arrive
        unsigned = app.send_task("apps.tasks.record", ["unsigned"]).id
        with_retired = producers[retired].send_task("apps.tasks.record", ["retired"]).id
        forged = str(uuid.uuid4())
        genuine = encode(Message(id=forged, task="apps.tasks.record", args=["genuine"]))
        body = sign(genuine, [new.encode()]).replace(b'"genuine"', b'"changed"')
        app.broker.publish(OutgoingMessage(forged, "celery", body))

        # Then the signed ones ran (the retry twice), and the other three are dead
        # letters with the reason, never run, with no result stored under their ids
        reasons = {d.id: d.reason for d in dead_letters(app, 3)}
        assert set(reasons) == {unsigned, with_retired, forged}
        assert reasons[unsigned].startswith("DecodeError: message is not signed")
        assert "matches none of this worker's message_signing_keys" in reasons[with_retired]
        assert "matches none of this worker's message_signing_keys" in reasons[forged]
        assert executions.count(retried.id) == 2
        for task_id in reasons:
            assert executions.count(task_id) == 0
            assert app.AsyncResult(task_id).state == states.PENDING
    finally:
        for producer in producers.values():
            producer.close()

    # ... and the worker showed how many keys it holds, never a key
    log = worker.stderr_text()
    assert "signing:  HMAC-SHA256, 2 keys" in log
    assert new not in log
    assert old not in log


def test_a_signing_worker_with_beat_runs_the_periodic_tasks_it_signs(
    app: Conveyor, start_security_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with --beat that signs and requires signatures, sending a task every 0.5 s
    env = {"CONVEYOR_TEST_SIGNING_KEYS": secrets.token_hex(32), "CONVEYOR_TEST_BEAT_RECORD": "b"}
    start_security_worker("--beat", "-P", "threads", "-c", "1", env=env).wait_ready()

    # When its beat has sent a few, Then they ran, and nothing went to the dead letters
    wait_until(lambda: len(executions.events("start")) >= 2, 30, "two periodic runs")
    assert app.broker.dead_letters() == []
