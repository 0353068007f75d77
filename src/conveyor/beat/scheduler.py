"""The scheduler: sends each slot of each ``beat_schedule`` entry once, whoever runs it.

Any number of beat processes (and ``worker --beat`` threads) may run. Every one
walks the same slots, since a slot is a pure function of the schedule and the clock
(``conveyor.schedules``); for each due slot it ``claim``s ``beat:<entry>:<slot>`` in
the broker, and only the claimant sends the task. The last slot sent of each entry
is a mark in the broker (``advance``), never a local file: a beat that starts reads
it, and what it finds missed between that mark and now is handled by the entry's
misfire policy (``once``, ``skip``, ``all``).

A slot is lost only if its claimant dies between claiming and sending it; it is never
sent twice, however many beats run. See docs/beat.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from conveyor.beat.entries import Entry, entries_of
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.schedules import Schedule
from conveyor.signals import beat_init

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.beat")

#: Misfire ``all`` sends at most this many missed slots of an entry (the latest ones).
MAX_CATCH_UP = 100
#: Misfire ``skip``: a slot reached more than this many seconds late is not sent.
SKIP_GRACE = 5.0
#: Seconds between attempts while the broker cannot be reached.
RETRY_SECONDS = 1.0
#: A slot's claim is kept at least this long (and two intervals of its entry).
MIN_CLAIM_SECONDS = 60.0
#: An entry's last-run mark is kept at least this long (and three intervals).
MIN_MARK_SECONDS = 31 * 86400.0
#: The message headers a beat adds to what it sends.
ENTRY_HEADER = "beat_entry"
SLOT_HEADER = "beat_slot"
SENDER_HEADER = "beat_sender"


def slot_key(entry: str, slot: float) -> str:
    """The claim key of one slot of one entry."""
    return f"beat:{entry}:{slot:.3f}"


def mark_key(entry: str) -> str:
    """The key of an entry's last-run mark: the latest slot a beat sent."""
    return f"beat:{entry}"


def due_slots(
    schedule: Schedule, tz: ZoneInfo, after: float, until: float, keep: int
) -> tuple[list[float], bool]:
    """The latest ``keep`` fire times in ``(after, until]``, oldest first, and whether
    earlier ones were left out.

    It looks back from ``until`` in doubling windows, so a downtime of a year costs a
    few dozen schedule steps, not one per missed slot.
    """
    if schedule.next_after(after, tz) > until:
        return [], False
    width = 1.0
    while True:
        start = max(after, until - width)
        found: deque[float] = deque(maxlen=keep)
        count = 0
        slot = schedule.next_after(start, tz)
        while slot <= until:
            found.append(slot)
            count += 1
            slot = schedule.next_after(slot, tz)
        if count >= keep or start <= after:
            left_out = count > keep or (start > after and schedule.next_after(after, tz) <= start)
            return list(found), left_out
        width *= 2


def describe_time(t: float, tz: ZoneInfo) -> str:
    """``2025-01-31 12:00:05 CET``: a UNIX time in the beat's time zone."""
    when = dt.datetime.fromtimestamp(t, tz)
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond // 1000:03d}"
    return f"{text} {when.tzname()}"


def default_hostname() -> str:
    return f"beat@{socket.gethostname()}"


@dataclass(slots=True)
class _Tracked:
    """What one beat knows of one entry."""

    entry: Entry
    handled: float  # the latest slot this process is done with (sent, taken, or let go)
    next_due: float  # the first slot after ``handled``


class Beat:
    """Sends the tasks of ``app.conf.beat_schedule`` at their slots; see the module
    docstring. ``run()`` in a process of its own, or ``start()``/``stop()`` as a thread
    beside a worker.

    Args:
        app: the application; its broker holds the claims and marks.
        hostname: names this scheduler in logs and claims (``/pid`` is added).
        max_interval: longest sleep between two looks at the schedule
            [``beat_max_loop_interval``].
        clock: the time (UNIX seconds); tests pass their own.

    Raises:
        ConfigurationError: an entry of ``beat_schedule`` is not valid, or the time zone
            is unknown.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        hostname: str | None = None,
        max_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.app = app
        app.finalize()  # on_after_configure receivers may add entries (add_periodic_task)
        self.owner = f"{hostname or default_hostname()}/{os.getpid()}"
        self.max_interval = (
            app.conf.beat_max_loop_interval if max_interval is None else max_interval
        )
        try:
            self.tz = ZoneInfo(app.conf.timezone)
        except (LookupError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError: LookupError
            raise ConfigurationError(f"timezone {app.conf.timezone!r}: {exc}") from None
        self.entries = entries_of(app)
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        self._config_error = ""
        self._entry_errors: dict[str, str] = {}
        # Per entry, the slot this beat raised its mark to and has not sent yet.
        self._marked: dict[str, float] = {}

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        """Send due slots until ``stop()``; survives broker outages and its own errors."""
        n = len(self.entries)
        beat_init.send(self)
        logger.info("beat %s started with %d entr%s", self.owner, n, "y" if n == 1 else "ies")
        while not self._stop.is_set():
            try:
                wake = self.tick()
            except Exception:  # never let the scheduler die: log, wait, go on
                logger.exception("beat %s: unexpected error", self.owner)
                wake = self._clock() + RETRY_SECONDS
            self._stop.wait(max(0.0, min(wake - self._clock(), self.max_interval)))
        logger.info("beat %s stopped", self.owner)

    def start(self) -> None:
        """Run in a daemon thread (``worker --beat``)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="conveyor-beat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; with ``start()``, wait up to ``timeout`` s for the thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- one look at the schedule ------------------------------------------------------

    def tick(self, now: float | None = None) -> float:
        """Send what is due at ``now`` (default: the clock); returns when the next slot
        of any entry is due (or when to retry, after a broker error)."""
        now = self._clock() if now is None else now
        self._reload()
        for name in set(self._tracked) - set(self.entries):
            del self._tracked[name]
        wake = now + self.max_interval
        for name, entry in self.entries.items():
            try:
                tracked = self._tracked.get(name)
                if tracked is None or tracked.entry != entry:
                    tracked = self._tracked[name] = self._track(entry, now)
                self._run(tracked, now)
                wake = min(wake, tracked.next_due)
                self._entry_errors.pop(name, None)
            except BrokerError as exc:
                self._broker_down(exc)
                return now + RETRY_SECONDS  # the others would fail too: all again soon
            except Exception as exc:  # a bug in a schedule must not stop the others
                if self._entry_errors.get(name) != repr(exc):
                    self._entry_errors[name] = repr(exc)
                    logger.exception("beat %s: entry %s failed", self.owner, name)
                wake = min(wake, now + RETRY_SECONDS)
        if self._down:
            self._down = False
            logger.info("beat %s: the broker is reachable again", self.owner)
        return wake

    def _reload(self) -> None:
        """Take up added, changed and removed entries; a bad change is logged and the
        entries as they were are kept."""
        try:
            self.entries = entries_of(self.app)
            self._config_error = ""
        except ConfigurationError as exc:
            if str(exc) != self._config_error:
                self._config_error = str(exc)
                logger.error("beat %s: %s (keeping the entries as they were)", self.owner, exc)

    def _track(self, entry: Entry, now: float) -> _Tracked:
        """Start following an entry from its last-run mark (or from now if it never ran)."""
        last = self.app.broker.advance(mark_key(entry.name), None, MIN_MARK_SECONDS)
        handled = now if last is None else last
        return _Tracked(entry, handled, entry.schedule.next_after(handled, self.tz))

    def _run(self, tracked: _Tracked, now: float) -> None:
        entry = tracked.entry
        keep = MAX_CATCH_UP if entry.misfire == "all" else 1
        slots, left_out = due_slots(entry.schedule, self.tz, tracked.handled, now, keep)
        if not slots:
            return
        latest = slots[-1]
        late = entry.misfire == "skip" and now - latest > SKIP_GRACE
        first = entry.schedule.next_after(tracked.handled, self.tz)
        for slot in [] if late else slots if entry.misfire == "all" else [latest]:
            self._fire(entry, slot)  # a broker error leaves the slot to the next look
            self._done(tracked, slot)
        self._done(tracked, latest)
        if first < latest:
            # Came due while no beat looked: downtime, an outage, a stopped process.
            if entry.misfire == "all":
                action = f"the latest {len(slots)} claimed" if left_out else "each claimed"
            elif late:
                action = f"none sent: the latest is {now - latest:.0f} s late"
            else:
                action = "the latest claimed"
            logger.info(
                "beat %s: %s had slots due from %s to %s (misfire %s: %s)",
                self.owner,
                entry.name,
                describe_time(first, self.tz),
                describe_time(latest, self.tz),
                entry.misfire,
                action,
            )
        elif late:
            logger.info(
                "beat %s: %s not sent for %s: %.0f s late (misfire skip)",
                self.owner,
                entry.name,
                describe_time(latest, self.tz),
                now - latest,
            )

    def _done(self, tracked: _Tracked, slot: float) -> None:
        tracked.handled = max(tracked.handled, slot)
        tracked.next_due = tracked.entry.schedule.next_after(tracked.handled, self.tz)

    def _fire(self, entry: Entry, slot: float) -> bool:
        """Claim the slot; if this beat got it, raise the entry's last-run mark to it and
        send the task. True if sent."""
        broker = self.app.broker
        key = slot_key(entry.name, slot)
        gap = entry.schedule.next_after(slot, self.tz) - slot
        holder = broker.claim(key, self.owner, max(MIN_CLAIM_SECONDS, 2 * gap))
        when = describe_time(slot, self.tz)
        if holder is not None:
            logger.debug("beat %s: %s for %s is %s's", self.owner, entry.name, when, holder)
            return False
        previous = broker.advance(mark_key(entry.name), slot, max(MIN_MARK_SECONDS, 3 * gap))
        if previous is None or previous < slot:
            self._marked[entry.name] = slot  # if sending fails, the next look sends it
        elif previous > slot or self._marked.get(entry.name) != slot:
            # Sent already: only a beat stopped for longer than a claim lasts gets here.
            logger.info(
                "beat %s: %s for %s not sent: the entry was sent for %s already",
                self.owner,
                entry.name,
                when,
                describe_time(previous, self.tz),
            )
            return False
        try:
            task_id = self._send(entry, slot)
        except BrokerError:
            raise  # retried at the next look: the claim and the mark are this beat's
        except Exception as exc:  # the task's arguments do not fit, cannot be encoded...
            self._marked.pop(entry.name, None)
            logger.error("beat %s could not send %s for %s: %s", self.owner, entry.name, when, exc)
            return False
        self._marked.pop(entry.name, None)
        logger.info(
            "beat %s sent %s for %s (%s[%s])", self.owner, entry.name, when, entry.task, task_id
        )
        return True

    def _send(self, entry: Entry, slot: float) -> str:
        options = dict(entry.options)
        headers = {
            **(options.pop("headers", None) or {}),
            ENTRY_HEADER: entry.name,
            SLOT_HEADER: slot,
            SENDER_HEADER: self.owner,
        }
        signature = self.app.signature(entry.task, entry.args, entry.kwargs, **options)
        result = signature.apply_async(headers=headers)
        return str(result.id)

    def _broker_down(self, exc: BrokerError) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "beat %s: cannot reach the broker (%s); retrying every %.0f s",
                self.owner,
                exc,
                RETRY_SECONDS,
            )

    # -- what ``beat --list`` shows ----------------------------------------------------

    def last_run(self, entry: Entry) -> float | None:
        """The latest slot a beat sent (or claimed to send) of ``entry``, None if none."""
        return self.app.broker.advance(mark_key(entry.name), None, MIN_MARK_SECONDS)

    def next_run(self, entry: Entry, now: float | None = None) -> float:
        """The entry's first slot after now."""
        return entry.schedule.next_after(self._clock() if now is None else now, self.tz)
