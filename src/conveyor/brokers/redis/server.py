"""What the broker checks of its Redis server before using it: eviction and persistence.

Redis under ``maxmemory`` with an evicting policy deletes keys to make room, and
a queue whose keys are evicted loses tasks without an error anywhere; so such a
server is refused unless the operator says otherwise. A server that persists
nothing loses every queued task when it restarts: that is worth a warning.
Managed Redis often disables ``CONFIG``; ``INFO`` tells the same where it can.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from conveyor.config import redact_url
from conveyor.exceptions import ConfigurationError
from conveyor.storage.redis import RedisConnection, as_str

SAFE_POLICY = "noeviction"


def _info(conn: RedisConnection, section: str) -> dict[str, str]:
    return _parse_info(conn.execute("INFO", section))


def _parse_info(reply: Any) -> dict[str, str]:
    text = as_str(reply)
    fields = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {name: value.strip() for name, _, value in fields}


def _config_value(reply: Any) -> str:
    """The value of a one-setting ``CONFIG GET`` reply: a map (RESP3) or a pair (RESP2)."""
    if isinstance(reply, dict):
        return next((as_str(v) for v in reply.values()), "")
    return as_str(reply[1]) if len(reply) > 1 else ""


def read_settings(conn: RedisConnection) -> tuple[str | None, bool | None]:
    """The server's ``maxmemory-policy`` and whether it persists anything (None: could
    not be read)."""
    names = ("maxmemory-policy", "appendonly", "save")
    try:
        replies = conn.execute_many([("CONFIG", "GET", name) for name in names])
        policy, appendonly, save = (_config_value(reply) for reply in replies)
    except ResponseError:  # CONFIG renamed away or not allowed to this user
        pass
    else:
        return policy or None, appendonly == "yes" or bool(save.strip())
    try:
        memory = _info(conn, "memory")
        persistence = _info(conn, "persistence")
    except ResponseError:
        return None, None
    aof = persistence.get("aof_enabled")
    return memory.get("maxmemory_policy"), True if aof == "1" else None


async def aread_settings(conn: RedisConnection) -> tuple[str | None, bool | None]:
    """``read_settings`` from a coroutine (no thread)."""
    try:
        policy, appendonly, save = [
            _config_value(await conn.aexecute("CONFIG", "GET", name))
            for name in ("maxmemory-policy", "appendonly", "save")
        ]
    except ResponseError:
        pass
    else:
        return policy or None, appendonly == "yes" or bool(save.strip())
    try:
        memory = _parse_info(await conn.aexecute("INFO", "memory"))
        persistence = _parse_info(await conn.aexecute("INFO", "persistence"))
    except ResponseError:
        return None, None
    aof = persistence.get("aof_enabled")
    return memory.get("maxmemory_policy"), True if aof == "1" else None


def server_warnings(conn: RedisConnection, allow_eviction: bool) -> list[str]:
    """What the worker should warn about; raises ConfigurationError for an evicting
    server unless ``allow_eviction``."""
    return judge(conn.url, *read_settings(conn), allow_eviction)


def judge(url: str, policy: str | None, persistent: bool | None, allow_eviction: bool) -> list[str]:
    """``server_warnings`` from settings already read."""
    where = redact_url(url)
    warnings = []
    if policy is not None and policy != SAFE_POLICY:
        risk = (
            f"Redis at {where} has maxmemory-policy {policy}: under memory pressure it "
            "deletes keys, and queued tasks vanish without an error or a dead letter"
        )
        if not allow_eviction:
            raise ConfigurationError(
                f"{risk}. Set maxmemory-policy to {SAFE_POLICY} (CONFIG SET maxmemory-policy "
                f"{SAFE_POLICY}, and in redis.conf), or set redis_allow_eviction = True to "
                "accept the risk."
            )
        warnings.append(f"{risk} (allowed by redis_allow_eviction)")
    elif policy is None:
        warnings.append(
            f"could not read maxmemory-policy of Redis at {where} (CONFIG and INFO refused): "
            f"make sure it is {SAFE_POLICY}, or queued tasks may be evicted"
        )
    if persistent is False:
        warnings.append(
            f"Redis at {where} persists nothing (appendonly no, no save points): a restart "
            "of Redis loses every queued task. Turn on appendonly yes for a production broker."
        )
    return warnings
