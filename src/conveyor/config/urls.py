"""Broker and backend URLs: the defaults, the environment variables, and hiding passwords."""

from __future__ import annotations

import os
import re
from typing import Final

DEFAULT_BROKER_URL: Final = "sqlite:///conveyor.sqlite3"
BROKER_URL_ENV: Final = "CONVEYOR_BROKER_URL"
RESULT_BACKEND_ENV: Final = "CONVEYOR_RESULT_BACKEND"

# The password in a URL's userinfo (``redis://:pw@``, ``redis://user:pw@``), of any scheme,
# even inside the repr of a list or dict; it may contain "@" or "/".
_PASSWORD = re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^:/@\s'"]*:)[^\s'"]*@""", re.IGNORECASE)
# A secret in a URL's query: redis-py reads ``?password=`` (unix:// URLs need it) and
# ``?ssl_password=``; any parameter whose name says pass, pwd, secret, token or auth.
_QUERY_SECRET = re.compile(
    r"""([?&;][^=&;\s'"#]*(?:pass|pwd|secret|token|auth)[^=&;\s'"#]*=)[^&;\s'"#]*""",
    re.IGNORECASE,
)


# Where one URL of a list ends: Sentinel's ``sentinel://a:26379;sentinel://b:26379/0``.
_NEXT_URL = re.compile(r";(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with passwords replaced by ``***``, for logs:
    in the userinfo of any scheme, and in query parameters such as ``?password=``."""
    return ";".join(
        _QUERY_SECRET.sub(r"\1***", _PASSWORD.sub(r"\1***@", part)) for part in _NEXT_URL.split(url)
    )


def from_env(variable: str) -> str | None:
    """``$variable``, None when unset or empty (as docker-compose leaves it)."""
    return os.environ.get(variable) or None
