"""Declared queues (``task_queues``, Celery's ``Queue``), and how sends and workers find theirs.

conveyor's brokers have queues and nothing else: a message goes to one queue by name,
and a queue exists once something is sent to it or consumed from it. Celery's
exchanges and routing keys therefore only serve to *find* a declared queue, when a
route (or ``apply_async``) gives a ``routing_key`` or an ``exchange`` but no ``queue``:

* ``direct`` exchanges: the queue whose routing key equals the key;
* ``topic``: the queue whose routing key, a pattern, matches (``*`` one word, ``#`` any);
* ``fanout``: every queue on the exchange, whatever the key.

Exactly one declared queue must match: a task goes to one queue. Where AMQP would drop
the message (no queue bound) or copy it to several, conveyor refuses the send instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from conveyor.exceptions import ConfigurationError

EXCHANGE_TYPES: Final = ("direct", "topic", "fanout")

#: kombu's ``Queue`` options about AMQP declaration: accepted so that a Celery
#: ``task_queues`` loads unchanged, kept on the queue, and without effect here.
AMQP_OPTIONS: Final = frozenset(
    {
        "alias",
        "auto_delete",
        "binding_arguments",
        "channel",
        "consumer_arguments",
        "durable",
        "exclusive",
        "expires",
        "max_length",
        "max_length_bytes",
        "max_priority",
        "message_ttl",
        "no_ack",
        "no_declare",
        "on_declared",
    }
)


class Exchange:
    """An exchange, as kombu's ``Exchange`` names one for a ``Queue``: its name and type.

    conveyor's brokers have queues and no exchanges: an exchange only says which
    declared queues a routing key can reach (``direct``, ``topic``, ``fanout``), so
    that Celery's routing configurations load as written. AMQP options (``durable``,
    ``delivery_mode``...) are accepted and have no effect.
    """

    __slots__ = ("name", "options", "type")

    def __init__(self, name: str = "", type: str = "direct", **options: Any) -> None:
        if type not in EXCHANGE_TYPES:
            raise ValueError(
                f"exchange {name!r}: type {type!r} is not one of {', '.join(EXCHANGE_TYPES)}"
            )
        self.name = name
        self.type = type
        self.options = options

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exchange):
            return NotImplemented
        return (self.name, self.type) == (other.name, other.type)

    def __hash__(self) -> int:
        return hash((self.name, self.type))

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, type={self.type!r})"


class Queue:
    """A queue, as Celery (kombu) declares one in ``task_queues``.

    Args:
        name: the queue's name.
        exchange: the exchange it is bound to: a name, or an object with ``.name``
            (and ``.type``) such as kombu's ``Exchange``. Default: ``task_default_exchange``.
        routing_key: its binding key; with a ``topic`` exchange a pattern of words,
            ``*`` and ``#``. Default: the queue's name.
        queue_arguments: AMQP queue arguments (``x-max-priority``...): kept, no effect.
        exchange_type: ``direct``, ``topic`` or ``fanout``. Default: the exchange
            object's ``.type``, else ``task_default_exchange_type``.
        **options: kombu's AMQP options (``durable``, ``max_priority``...): kept, no
            effect (every conveyor queue is durable and has priorities 0-9).

    Raises:
        TypeError: an option kombu's ``Queue`` does not have.
        ValueError: an empty name, or an exchange type other than those three.
    """

    __slots__ = ("exchange", "exchange_type", "name", "options", "queue_arguments", "routing_key")

    def __init__(
        self,
        name: str,
        exchange: object = None,
        routing_key: str | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        *,
        exchange_type: str | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - AMQP_OPTIONS
        if unknown:
            raise TypeError(f"Queue() got unexpected option(s) {sorted(unknown)}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a queue's name is a non-empty str, not {name!r}")
        if exchange is not None and not isinstance(exchange, str):
            # kombu's Exchange; its default, Exchange(''), is "no exchange" and its type moot
            named = getattr(exchange, "name", None) or None
            if named:
                exchange_type = exchange_type or getattr(exchange, "type", None) or None
            exchange = named
        if exchange_type is not None and exchange_type not in EXCHANGE_TYPES:
            raise ValueError(
                f"queue {name!r}: exchange type {exchange_type!r} is not one of "
                f"{', '.join(EXCHANGE_TYPES)} (conveyor finds queues by name or routing key)"
            )
        self.name: str = name
        self.exchange: str | None = exchange or None
        self.routing_key: str | None = routing_key or None
        self.queue_arguments: dict[str, Any] | None = (
            dict(queue_arguments) if queue_arguments else None
        )
        self.exchange_type: str | None = exchange_type
        self.options: dict[str, Any] = options

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.exchange, self.routing_key, self.exchange_type)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Queue):
            return NotImplemented
        return self._key() == other._key() and self.queue_arguments == other.queue_arguments

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = [repr(self.name)]
        for field in ("exchange", "routing_key", "exchange_type", "queue_arguments"):
            value = getattr(self, field)
            if value is not None:
                shown.append(f"{field}={value!r}")
        shown += [f"{key}={value!r}" for key, value in sorted(self.options.items())]
        return f"Queue({', '.join(shown)})"

    def matches(self, routing_key: str) -> bool:
        """Whether a message sent with ``routing_key`` reaches this queue (on its exchange)."""
        if self.exchange_type == "fanout":
            return True
        bound = self.routing_key or self.name
        if self.exchange_type == "topic":
            return _topic_match(bound.split("."), routing_key.split("."))
        return bound == routing_key


def _topic_match(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _topic_match(rest, words[1:])


def as_queue(value: object) -> Queue:
    """``value`` as a ``Queue``: a ``Queue``, a queue name, or a kombu-like object
    (duck-typed: ``.name``, ``.exchange``, ``.routing_key``, ``.queue_arguments``).

    Raises:
        TypeError: not one of those.
        ValueError: a kombu queue bound more than once (``bindings``), or a bad name.
    """
    if isinstance(value, Queue):
        return value
    if isinstance(value, str):
        return Queue(value)
    name = getattr(value, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"a queue is a Queue, a queue name or a kombu Queue, not {value!r}")
    if getattr(value, "bindings", None):
        raise ValueError(
            f"queue {name!r} has several bindings: conveyor finds a queue by its one "
            "routing_key; declare the queue with exchange= and routing_key= instead"
        )
    return Queue(
        name,
        exchange=getattr(value, "exchange", None),
        routing_key=getattr(value, "routing_key", None) or None,
        queue_arguments=getattr(value, "queue_arguments", None),
    )


def as_queues(value: object) -> tuple[Queue, ...]:
    """The queues of a ``task_queues`` value: an iterable of what ``as_queue`` takes, or
    Celery 3's dict of queue name -> options (``exchange``, ``exchange_type``,
    ``routing_key`` or ``binding_key``, ``queue_arguments``...).

    Raises:
        TypeError, ValueError: a queue is not one, or a name is declared twice.
    """
    if isinstance(value, Mapping):
        queues = [_from_options(name, options) for name, options in value.items()]
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError("task_queues is a list of queues (or Celery 3's dict), not one value")
    else:
        queues = [as_queue(item) for item in value]
    seen: set[str] = set()
    for queue in queues:
        if queue.name in seen:
            raise ValueError(f"queue {queue.name!r} is declared twice")
        seen.add(queue.name)
    return tuple(queues)


def _from_options(name: object, options: object) -> Queue:
    if not isinstance(name, str):
        raise TypeError(f"a queue's name is a str, not {name!r}")
    if not isinstance(options, Mapping):
        raise TypeError(f"queue {name!r}: its options are a dict, not {options!r}")
    kwargs = dict(options)
    binding_key = kwargs.pop("binding_key", None)
    kwargs.setdefault("routing_key", binding_key)
    return Queue(name, **kwargs)


def _name(value: object, what: str) -> str:
    """The name of a route's ``queue`` or ``exchange``: a str, or an object with ``.name``."""
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"a route's {what} is a name or a kombu-like object, not {value!r}"
        )
    return name


class Queues:
    """The queues an app declares, Celery's defaults filled in: ``task_queues``, or
    only ``task_default_queue`` while that is unset. ``app.conf.declared_queues()``.

    Args:
        declared: the queues of ``task_queues`` (empty: the default queue alone).
        default_queue: ``task_default_queue``.
        default_exchange: ``task_default_exchange`` (None: the default queue's name).
        default_routing_key: ``task_default_routing_key`` (None: the default queue's name).
        default_exchange_type: ``task_default_exchange_type``.
        create_missing: ``task_create_missing_queues``.
    """

    def __init__(
        self,
        declared: Iterable[Queue],
        *,
        default_queue: str,
        default_exchange: str | None = None,
        default_routing_key: str | None = None,
        default_exchange_type: str = "direct",
        create_missing: bool = True,
    ) -> None:
        self.default_queue = default_queue
        self.default_exchange = default_exchange or default_queue
        self.default_routing_key = default_routing_key or default_queue
        self.create_missing = create_missing
        queues = list(declared) or [Queue(default_queue, routing_key=self.default_routing_key)]
        self._queues: dict[str, Queue] = {
            q.name: Queue(
                q.name,
                q.exchange or self.default_exchange,
                q.routing_key or q.name,
                q.queue_arguments,
                exchange_type=q.exchange_type or default_exchange_type,
                **q.options,
            )
            for q in queues
        }

    def __iter__(self) -> Iterator[Queue]:
        return iter(self._queues.values())

    def __contains__(self, name: object) -> bool:
        return name in self._queues

    @property
    def names(self) -> list[str]:
        """The declared queues' names, in declaration order."""
        return list(self._queues)

    def check(self, name: str) -> str:
        """``name``, if tasks may go to (and workers consume) that queue.

        Raises:
            ConfigurationError: it is not declared and ``task_create_missing_queues`` is False.
        """
        if self.create_missing or name in self._queues:
            return name
        raise ConfigurationError(
            f"queue {name!r} is not in task_queues, and task_create_missing_queues is False "
            f"(declared: {', '.join(self._queues)})"
        )

    def consumed(self, requested: Iterable[str] | None = None) -> list[str]:
        """The queues a worker consumes: ``requested`` (``-Q``), else every declared one.

        Raises:
            ConfigurationError: a requested queue is not declared while
                ``task_create_missing_queues`` is False.
        """
        if requested is None:
            return self.names
        return [self.check(name) for name in dict.fromkeys(requested)]

    def bound(self, routing_key: str | None, exchange: object = None) -> Queue:
        """The one declared queue a message with this routing key (on this exchange, if
        given) reaches. Without a routing key, ``task_default_routing_key``.

        Raises:
            ConfigurationError: no declared queue matches, or several do.
        """
        key = routing_key if routing_key is not None else self.default_routing_key
        on = None if exchange is None else _name(exchange, "exchange")
        found = [q for q in self if (on is None or q.exchange == on) and q.matches(key)]
        if len(found) == 1:
            return found[0]
        where = f"routing key {key!r}" + (f" on exchange {on!r}" if on else "")
        if not found:
            declared = ", ".join(f"{q.name} ({q.exchange}, {q.routing_key})" for q in self)
            raise ConfigurationError(
                f"no queue in task_queues is bound to {where} (declared: {declared})"
            )
        raise ConfigurationError(
            f"{where} matches queues {', '.join(q.name for q in found)}: a conveyor task "
            "goes to one queue; give the route a 'queue' or a key only one queue is bound to"
        )

    def destination(self, explicit: Mapping[str, Any], route: Mapping[str, Any]) -> str:
        """The queue of a send: the caller's ``queue`` (or ``routing_key``/``exchange``),
        else the route's, else ``task_default_queue``.

        Raises:
            ConfigurationError: see ``check`` and ``bound``.
        """
        for options in (explicit, route):
            if options.get("queue"):
                return self.check(_name(options["queue"], "queue"))
            key, exchange = options.get("routing_key"), options.get("exchange")
            if key is not None or exchange is not None:
                return self.bound(key, exchange).name
        return self.check(self.default_queue)
