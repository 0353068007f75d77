"""Renders docs/redis.md from the key layout and the scripts' own headers."""

from __future__ import annotations

from importlib import resources

from conveyor.brokers.redis import keys

_INTRO = """\
# The Redis broker: keys and scripts

Generated from `src/conveyor/brokers/redis/keys.py` and the header of each
script in `src/conveyor/brokers/redis/scripts/` (`make docs`); a test keeps
this page and the code in step.

Every state change of a message is one Lua script, so no crash can leave a
message half-moved: taken but not leased, acked but still in flight. Leases are
renewed by the worker's heartbeat; a lease that expires means its worker is gone.

Results (`conveyor/backends/redis.py`) are one string key per task,
`P:result:{task_id}`, written with `PX` = `result_expires` on every write, and a
pub/sub channel of the same name on which each write publishes the stored value
(empty if over 16 KiB), so `AsyncResult.get()` wakes as soon as the result is
stored, usually with the value in hand. When the result backend is on the
broker's Redis (the same URL), a worker's results are written by `ack.lua`
with their acks: one round trip, and a stale delivery stores nothing.
"""


def render_markdown() -> str:
    """The text of docs/redis.md."""
    folder = resources.files("conveyor.brokers.redis") / "scripts"
    parts = [_INTRO, "## Keys\n", (keys.__doc__ or "").strip() + "\n", "## Scripts\n"]
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
    for name in names:
        header = []
        for line in (folder / name).read_text().splitlines():
            if not line.startswith("--"):
                break
            header.append(line[2:].strip())
        parts.append(f"### `{name}`\n\n```\n" + "\n".join(header) + "\n```\n")
    return "\n".join(parts)
