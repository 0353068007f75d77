"""The Redis broker's coordination records: one script on one key per call.

Revokes, rate permits, concurrency slots, claims, tallies and marks (see
``Broker.revoke`` and below, and ``keys.py`` for each key's type and TTL). Every
call is safe to retry after a lost reply: adding a revoke, a claim, a slot or a
tally member again changes nothing, and a rate request names itself so that its
retry takes no second permit.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

from conveyor.brokers.base import check_finite, check_positive
from conveyor.brokers.redis.keys import (
    claim_key,
    mark_key,
    rate_key,
    revoked_key,
    slots_key,
    tally_key,
)
from conveyor.storage.redis import as_str


def ttl_ms(ttl: float) -> int:
    """A positive ttl in whole milliseconds, rounded up (PX 0 would be an error)."""
    return max(math.ceil(check_positive("ttl", ttl) * 1000), 1)


class RedisCoordination:
    """The coordination part of the broker contract, on ``_run`` of the broker."""

    prefix: str

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retry_for: float | None = None
    ) -> Any:
        raise NotImplementedError

    def revoke(self, task_ids: Sequence[str], ttl: float, *, terminate: bool = False) -> None:
        px = ttl_ms(ttl)
        if task_ids:
            self._run("revoke", [revoked_key(self.prefix)], ["add", px, int(terminate), *task_ids])

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bool]:
        if not task_ids:
            return {}
        codes = self._run("revoke", [revoked_key(self.prefix)], ["check", *task_ids])
        return {i: int(c) == 2 for i, c in zip(task_ids, codes, strict=True) if int(c)}

    def rate_acquire(
        self, key: str, limit: int, period: float, *, request: str | None = None
    ) -> float:
        check_positive("limit", limit)
        period_us = check_positive("period", period) * 1e6
        # The request id is a word of the stored value: no spaces.
        name = (request or secrets.token_hex(8)).replace(" ", "_")
        args = [period_us / limit, period_us, name]
        wait_us = self._run("rate", [rate_key(self.prefix, key)], args)
        return int(wait_us) / 1e6

    def slot_acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_positive("limit", limit)
        args = ["acquire", ttl_ms(ttl), limit, holder]
        return bool(int(self._run("slots", [slots_key(self.prefix, key)], args)))

    def slot_renew(self, key: str, holders: Sequence[str], ttl: float) -> None:
        px = ttl_ms(ttl)
        if holders:
            self._run("slots", [slots_key(self.prefix, key)], ["renew", px, *holders])

    def slot_release(self, key: str, holder: str) -> None:
        self._run("slots", [slots_key(self.prefix, key)], ["release", holder])

    def claim(self, key: str, owner: str, ttl: float) -> str | None:
        current = self._run("claim", [claim_key(self.prefix, key)], ["claim", owner, ttl_ms(ttl)])
        return None if current is None else as_str(current)

    def release_claim(self, key: str, owner: str) -> bool:
        return bool(int(self._run("claim", [claim_key(self.prefix, key)], ["release", owner])))

    def tally(self, key: str, member: str, ttl: float) -> int:
        return int(self._run("tally", [tally_key(self.prefix, key)], [member, ttl_ms(ttl)]))

    def advance(self, key: str, value: float | None, ttl: float) -> float | None:
        px = ttl_ms(ttl)
        arg = "" if value is None else repr(float(check_finite("value", value)))
        previous = self._run("advance", [mark_key(self.prefix, key)], [arg, px])
        return None if previous is None else float(as_str(previous))
