"""Who may use the dashboard: HTTP basic auth or a bearer token, and no cross-site writes.

With credentials configured every request needs one of them, static files and
``/metrics`` included. A token is accepted as ``Authorization: Bearer T``, as
``?token=T`` (then kept in a same-site cookie, so that the page's own requests for
scripts and data carry it) or as that cookie. A request that changes something must
be a POST carrying the header the dashboard's script sends, from a page of the same
origin: a form or image on another site can send neither.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The cookie that carries a token given once as ``?token=``.
TOKEN_COOKIE = "conveyor_dashboard_token"
#: The header the dashboard's script adds to every write; a cross-site form cannot.
WRITE_HEADER = "x-conveyor-dashboard"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request must show: ``basic`` as ``(user, password)``, or ``token``."""

    basic: tuple[str, str] | None = None
    token: str | None = None

    @classmethod
    def parse(cls, basic_auth: str | None, token: str | None) -> Credentials:
        """From the command line's ``user:pass`` and token.

        Raises:
            ValueError: ``basic_auth`` has no ``:`` or an empty user or password, or
                the token is empty.
        """
        basic = None
        if basic_auth is not None:
            user, sep, password = basic_auth.partition(":")
            if not sep or not user or not password:
                raise ValueError("--basic-auth must be USER:PASSWORD, both non-empty")
            basic = (user, password)
        if token is not None and not token:
            raise ValueError("--token must not be empty")
        return cls(basic, token)

    @property
    def required(self) -> bool:
        """Whether any credential is configured (else every request is let in)."""
        return self.basic is not None or self.token is not None

    def accepts(
        self, authorization: str | None, query_token: str | None, cookie: str | None
    ) -> bool:
        """Whether a request with these ``Authorization`` header, ``?token=`` and token
        cookie values is let in."""
        if not self.required:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        scheme = scheme.lower()
        if self.token is not None:
            given = [query_token, cookie, value if scheme == "bearer" else None]
            if any(t is not None and _same(t, self.token) for t in given):
                return True
        if self.basic is not None and scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            # both compared, always: the time taken says nothing about which was wrong
            return _same(user, self.basic[0]) & _same(password, self.basic[1])
        return False

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header of a 401: basic makes browsers ask."""
        return 'Basic realm="conveyor dashboard"' if self.basic else 'Bearer realm="conveyor"'


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's ``Origin`` (absent: a same-origin request of an old browser,
    or a non-browser client) names the host it was sent to."""
    if origin is None:
        return True
    if not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()
