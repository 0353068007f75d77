"""The broker's Lua scripts: loaded from ``scripts/``, run by SHA on the hot path.

Every script is ``_common.lua`` followed by its own file; each opens with its
KEYS, ARGV and return value. A restarted Redis has forgotten every script, so
a NOSCRIPT answer loads it and runs it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from conveyor.storage.redis import RedisConnection

NAMES = (
    "publish",
    "fetch",
    "ack",
    "settle",
    "renew",
    "reclaim",
    "dead",
    "purge",
    "revoke",
    "rate",
    "slots",
    "claim",
    "tally",
    "advance",
    "workers",
    "stream",
    "stats",
)

#: Scripts whose writes must survive a failover: with ``broker_replica_acks`` they
#: return only once that many replicas hold them. The others (fetch, renew, reads)
#: are repaired by leases if a failover drops them.
REPLICATED = frozenset(
    {"publish", "ack", "settle", "dead", "purge", "revoke", "slots", "claim", "tally", "advance"}
)


def source(name: str) -> str:
    """The full source of one script: the shared helpers, then the script."""
    folder = resources.files("conveyor.brokers.redis") / "scripts"
    common = (folder / "_common.lua").read_text()
    return common + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """Runs the broker's scripts on one connection (no retries: callers wrap these
    in ``RedisConnection.call``)."""

    def __init__(self, conn: RedisConnection):
        self._conn = conn
        self._sources = {name: source(name) for name in NAMES}
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._sources.items()
        }

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script, by SHA, loading it first if the server does not know it."""
        sha = self._shas[name]
        replicated = name in REPLICATED
        try:
            return self._conn.execute(
                "EVALSHA", sha, len(keys), *keys, *args, replicated=replicated
            )
        except NoScriptError:
            self._conn.execute("SCRIPT", "LOAD", self._sources[name])
            return self._conn.execute(
                "EVALSHA", sha, len(keys), *keys, *args, replicated=replicated
            )

    async def arun(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``run`` from a coroutine (``RedisConnection.aexecute``: retried, no thread)."""
        sha = self._shas[name]
        replicated = name in REPLICATED
        try:
            return await self._conn.aexecute(
                "EVALSHA", sha, len(keys), *keys, *args, replicated=replicated
            )
        except NoScriptError:
            await self._conn.aexecute("SCRIPT", "LOAD", self._sources[name])
            return await self._conn.aexecute(
                "EVALSHA", sha, len(keys), *keys, *args, replicated=replicated
            )

    def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Several calls of one script sent together (a pipeline: each call atomic by
        itself, not all together); their replies. One round trip unless the server
        has to be given the script first: then every call runs again, so only for
        scripts that may run twice (reads)."""
        sha = self._shas[name]
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        replicated = name in REPLICATED
        try:
            return self._conn.execute_many(commands, replicated=replicated)
        except NoScriptError:
            self._conn.execute("SCRIPT", "LOAD", self._sources[name])
            return self._conn.execute_many(commands, replicated=replicated)

    def run_each(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Calls of several scripts sent together (a pipeline: each atomic by itself);
        their replies. A call the server could not run for want of its script is
        loaded and run again on its own: each call runs once, whatever the server
        knew. Any other error reply is raised once every reply is read."""
        commands = [
            ("EVALSHA", self._shas[name], len(keys), *keys, *args) for name, keys, args in calls
        ]
        replicated = any(name in REPLICATED for name, _, _ in calls)
        replies = self._conn.execute_many(commands, raise_errors=False, replicated=replicated)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = self.run(*calls[i])
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def run_atomically(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> None:
        """Several calls of one script in one MULTI/EXEC: all are applied, or none.

        The script is loaded in the same round trip, before MULTI, so that no call
        inside the transaction can meet NOSCRIPT.
        """
        sha = self._shas[name]
        commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", self._sources[name]), ("MULTI",)]
        commands += [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        commands.append(("EXEC",))
        replies = self._conn.execute_many(commands, replicated=name in REPLICATED)
        for reply in replies[-1] or ():
            if isinstance(reply, ResponseError):
                raise reply
