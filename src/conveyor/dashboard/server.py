"""The Starlette app: the page, its static files, the JSON API and ``/metrics``.

Every endpoint is a plain function: Starlette runs it in its thread pool, so the
broker's blocking calls never stall the event loop. Reads are GET; every change is
a POST checked by ``WriteGuard`` (see ``conveyor.dashboard.auth``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.dashboard import reading
from conveyor.dashboard.auth import TOKEN_COOKIE, WRITE_HEADER, Credentials, same_origin
from conveyor.monitoring import metrics

if TYPE_CHECKING:
    from conveyor.app import Conveyor

STATIC = Path(__file__).resolve().parent / "static"
#: How long ``inspect`` waits for a worker's reply, in seconds.
INSPECT_TIMEOUT = 1.0


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS, default=repr)


def _error(status: int, message: str) -> Response:
    return _Json({"error": message}, status_code=status)


class AuthGuard:
    """ASGI middleware: a 401 for any request without the configured credentials; a
    token given as ``?token=`` is answered with a cookie that carries it from then on."""

    def __init__(self, app: ASGIApp, credentials: Credentials):
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.credentials.required:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        query_token = conn.query_params.get("token")
        if not self.credentials.accepts(
            conn.headers.get("authorization"), query_token, conn.cookies.get(TOKEN_COOKIE)
        ):
            response = PlainTextResponse(
                "authentication required",
                status_code=401,
                headers={"WWW-Authenticate": self.credentials.challenge()},
            )
            await response(scope, receive, send)
            return
        if query_token is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                cookie = Response()
                cookie.set_cookie(
                    TOKEN_COOKIE, query_token, httponly=True, samesite="strict", path="/"
                )
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *cookie.raw_headers[-1:]]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class WriteGuard:
    """ASGI middleware: a request to ``/api/`` that is not a GET must be a POST with the
    dashboard's header, from this origin (a cross-site page can do neither)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            conn = HTTPConnection(scope)
            problem = None
            if scope["method"] != "POST":
                problem = (405, "only GET and POST")
            elif conn.headers.get(WRITE_HEADER) != "1":
                problem = (403, f"a change needs the {WRITE_HEADER} header")
            elif not same_origin(conn.headers.get("origin"), conn.headers.get("host")):
                problem = (403, "cross-origin request refused")
            if problem is not None:
                await _error(*problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    doc = orjson.loads(raw)
    return doc if isinstance(doc, dict) else {}


def create_app(
    conveyor_app: Conveyor, *, basic_auth: str | None = None, token: str | None = None
) -> Starlette:
    """The dashboard for ``conveyor_app``, an ASGI app (mountable in another).

    Args:
        conveyor_app: the application whose broker and result backend it reads.
        basic_auth: ``user:password`` every request must show (HTTP basic auth).
        token: a token every request must show (``Authorization: Bearer``, or
            ``?token=``); with both, either is enough.

    Raises:
        ValueError: a malformed ``basic_auth`` or an empty token.
    """
    app = conveyor_app
    credentials = Credentials.parse(basic_auth, token)

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def get_metrics(request: Request) -> Response:
        body, content_type = metrics.render(app)
        return Response(body, media_type=content_type)

    def get_overview(request: Request) -> Response:
        return _Json(reading.overview(app))

    def get_queues(request: Request) -> Response:
        return _Json({"now": time.time(), "queues": reading.queues(app, time.time())})

    async def purge_queue(request: Request) -> Response:
        queue = str((await _body(request)).get("queue") or "")
        if not queue:
            return _error(400, "which queue?")
        return _Json({"purged": app.broker.purge(queue)})

    def get_workers(request: Request) -> Response:
        return _Json({"now": time.time(), "workers": reading.workers(app)})

    def get_worker(request: Request) -> Response:
        name = request.query_params.get("name", "")
        found = [w for w in reading.workers(app) if w["name"] == name]
        active: Any = None
        error = None
        try:
            replies = _control().inspect(destination=[name], timeout=INSPECT_TIMEOUT).active()
            active = (replies or {}).get(name)
        except Exception as exc:  # an unreachable worker must not break the page
            error = f"{type(exc).__name__}: {exc}"
        return _Json(
            {
                "now": time.time(),
                "worker": found[0] if found else None,
                "active": active,
                "error": error,
            }
        )

    def _control() -> Any:
        # typed as Any: conveyor.control's methods take Celery's keyword arguments
        return app.control

    async def control_worker(request: Request) -> Response:
        body = await _body(request)
        name = str(body.get("name") or "")
        action = request.path_params["action"]
        if not name:
            return _error(400, "which worker?")
        control = _control()
        if action == "shutdown":
            reply = control.shutdown(destination=[name])
        elif action in ("pool-grow", "pool-shrink"):
            n = int(body.get("n") or 1)
            method = control.pool_grow if action == "pool-grow" else control.pool_shrink
            reply = method(n, destination=[name], reply=True, timeout=INSPECT_TIMEOUT)
            if not reply:
                return _error(504, f"{name} did not answer within {INSPECT_TIMEOUT:g} s")
        else:
            return _error(404, f"unknown action {action!r}")
        return _Json({"ok": True, "reply": reply})

    def get_tasks(request: Request) -> Response:
        q = request.query_params
        return _Json(
            reading.tasks(
                app,
                state=q.get("state") or None,
                name=q.get("name") or None,
                task_id=q.get("id") or None,
                limit=min(int(q.get("limit") or 200), 1000),
            )
        )

    def get_task(request: Request) -> Response:
        task_id = request.query_params.get("id", "")
        found = reading.task(app, task_id) if task_id else None
        if found is None:
            return _error(404, f"no task {task_id!r} in the events, results or dead letters")
        return _Json(found)

    async def revoke_task(request: Request) -> Response:
        body = await _body(request)
        task_id = str(body.get("id") or "")
        if not task_id:
            return _error(400, "which task?")
        app.control.revoke(task_id, terminate=bool(body.get("terminate")))
        return _Json({"ok": True})

    async def retry_task(request: Request) -> Response:
        task_id = str((await _body(request)).get("id") or "")
        try:
            return _Json({"id": reading.resend(app, task_id)})
        except LookupError as exc:
            return _error(409, str(exc))

    def get_dead(request: Request) -> Response:
        q = request.query_params
        limit = min(int(q.get("limit") or 200), 1000)
        return _Json(
            {
                "now": time.time(),
                "dead": reading.dead_letters(app, q.get("queue") or None, limit),
                "total": sum(s.dead for s in app.broker.stats()),
            }
        )

    def get_dead_letter(request: Request) -> Response:
        message_id = request.query_params.get("id", "")
        dead = app.broker.get_dead(message_id)
        if dead is None:
            return _error(404, f"no dead letter {message_id!r}")
        return _Json(reading.dead_letter_detail(app, dead))

    async def settle_dead(request: Request) -> Response:
        body = await _body(request)
        action = request.path_params["action"]
        queue = body.get("queue") or None
        if action == "requeue-all":
            return _Json({"count": reading.requeue_all(app, queue)})
        if action == "drop-all":
            return _Json({"count": app.broker.purge_dead(queue)})
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            return _error(400, "which dead letters? (ids)")
        if action == "requeue":
            done = [app.broker.requeue_dead(str(i)) for i in ids]
        elif action == "drop":
            done = [app.broker.drop_dead(str(i)) for i in ids]
        else:
            return _error(404, f"unknown action {action!r}")
        return _Json({"count": sum(done)})

    def get_schedules(request: Request) -> Response:
        return _Json(reading.schedules(app))

    routes = [
        Route("/", index),
        Route("/metrics", get_metrics),
        Route("/api/overview", get_overview),
        Route("/api/queues", get_queues),
        Route("/api/queues/purge", purge_queue, methods=["POST"]),
        Route("/api/workers", get_workers),
        Route("/api/worker", get_worker),
        Route("/api/workers/{action}", control_worker, methods=["POST"]),
        Route("/api/tasks", get_tasks),
        Route("/api/task", get_task),
        Route("/api/tasks/revoke", revoke_task, methods=["POST"]),
        Route("/api/tasks/retry", retry_task, methods=["POST"]),
        Route("/api/dead", get_dead),
        Route("/api/dead-letter", get_dead_letter),
        Route("/api/dead/{action}", settle_dead, methods=["POST"]),
        Route("/api/schedules", get_schedules),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthGuard, credentials=credentials), Middleware(WriteGuard)],
    )
