"""``conveyor dashboard`` over plain HTTP: who is let in, and which requests may change
anything. The dashboard runs as a real subprocess on a SQLite broker."""

from __future__ import annotations

import base64
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from harness import DashboardProcess, run_conveyor
from stack import APP, app_env

from conveyor.cli.dashboard_cmd import check_exposure, is_loopback
from conveyor.dashboard import require
from conveyor.dashboard.auth import TOKEN_COOKIE, Credentials
from conveyor.exceptions import ConfigurationError
from redis_server import free_port

TOKEN = "s3cret-token"
USER, PASSWORD = "ops", "pa:ss"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    """A dashboard that wants the token or basic auth."""
    directory = tmp_path_factory.mktemp("dashboard-http")
    env = app_env(f"sqlite:///{directory / 'broker.sqlite3'}", directory / "executions.log")
    process = DashboardProcess(
        ["--token", TOKEN, "--basic-auth", f"{USER}:{PASSWORD}"],
        env,
        directory / "dash.log",
        app=APP,
    )
    try:
        yield process.wait_ready()
    finally:
        process.cleanup()
        print(process.stderr_text())


def call(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one request; error statuses too."""
    request = urllib.request.Request(
        url, data=body if method != "GET" else None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BEARER = {"Authorization": f"Bearer {TOKEN}"}
WRITE = {**BEARER, "X-Conveyor-Dashboard": "1", "Content-Type": "application/json"}


def test_non_loopback_address_without_credentials_is_refused_at_start(tmp_path: Path) -> None:
    # When the dashboard is asked to listen on every interface without credentials
    env = app_env(f"sqlite:///{tmp_path / 'broker.sqlite3'}", tmp_path / "executions.log")
    done = run_conveyor(
        "dashboard", "--address", "0.0.0.0", "--port", str(free_port()), env=env, app=APP
    )

    # Then it refuses, in one line, and exits 1
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "refusing to serve the dashboard on 0.0.0.0 without authentication" in line
    assert "--basic-auth" in line
    assert "--token" in line


@pytest.mark.parametrize(
    ("address", "basic_auth", "token", "allowed"),
    [
        ("127.0.0.1", None, None, True),
        ("localhost", None, None, True),
        ("::1", None, None, True),
        ("0.0.0.0", None, None, False),
        ("10.1.2.3", None, None, False),
        ("dashboard.example.com", None, None, False),
        ("0.0.0.0", "a:b", None, True),
        ("0.0.0.0", None, "t", True),
    ],
)
def test_exposure_rule(
    address: str, basic_auth: str | None, token: str | None, allowed: bool
) -> None:
    if allowed:
        check_exposure(address, basic_auth, token)
    else:
        with pytest.raises(ConfigurationError, match="refusing"):
            check_exposure(address, basic_auth, token)
    assert is_loopback(address) == (address in ("127.0.0.1", "localhost", "::1"))


@pytest.mark.parametrize("path", ["", "static/app.js", "api/overview", "api/tasks", "metrics"])
def test_every_route_needs_credentials(dashboard: DashboardProcess, path: str) -> None:
    status, headers, _ = call(dashboard.url + path)
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic")
    # wrong ones are refused too
    assert call(dashboard.url + path, headers=basic(USER, "wrong"))[0] == 401
    assert call(dashboard.url + path, headers={"Authorization": "Bearer nope"})[0] == 401
    assert call(dashboard.url + path + "?token=nope")[0] == 401


def test_token_and_basic_auth_let_in(dashboard: DashboardProcess) -> None:
    url = dashboard.url + "api/overview"
    assert call(url, headers=BEARER)[0] == 200
    assert call(url, headers=basic(USER, PASSWORD))[0] == 200
    # ?token= once (a link in a browser): answered with a cookie that carries it on
    status, headers, _ = call(dashboard.url + f"?token={TOKEN}")
    assert status == 200
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert call(url, headers={"Cookie": f"{TOKEN_COOKIE}={TOKEN}"})[0] == 200


def test_metrics_are_prometheus_text(dashboard: DashboardProcess) -> None:
    status, headers, body = call(dashboard.url + "metrics", headers=BEARER)
    assert status == 200
    # Prometheus' text format (0.0.4, or 1.0.0 of newer clients), as the client says
    assert headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert headers["content-type"].startswith("text/plain; version=")
    assert b"# TYPE" in body


def test_changes_are_post_only_with_the_header_and_from_this_origin(
    dashboard: DashboardProcess,
) -> None:
    url = dashboard.url + "api/dead/drop-all"
    # a GET (a link, an <img>) changes nothing
    assert call(url, headers=BEARER)[0] == 405
    assert call(url, "PUT", headers=WRITE, body=b"{}")[0] == 405
    # a POST without the page's header (a cross-site form cannot add one)
    assert call(url, "POST", headers=BEARER, body=b"{}")[0] == 403
    # a POST from another origin
    foreign = {**WRITE, "Origin": "http://evil.example"}
    assert call(url, "POST", headers=foreign, body=b"{}")[0] == 403
    # the page's own POST
    same = {**WRITE, "Origin": f"http://127.0.0.1:{dashboard.port}"}
    status, _, body = call(url, "POST", headers=same, body=b"{}")
    assert (status, body) == (200, b'{"count":0}')


def test_credentials_are_parsed_strictly() -> None:
    assert Credentials.parse("u:p:q", None).basic == ("u", "p:q")
    for bad in ("nocolon", ":p", "u:"):
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            Credentials.parse(bad, None)
    with pytest.raises(ValueError, match="empty"):
        Credentials.parse(None, "")
    assert Credentials().accepts(None, None, None)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"uvicorn: pip install 'conveyor\[dashboard\]'"):
        require()
