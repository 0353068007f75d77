"""The task envelope: every field survives the round trip; bad bytes fail with a clear reason."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from conveyor.exceptions import DecodeError, EncodeError
from conveyor.message import PROTOCOL_VERSION, Message, decode, encode, new_id, peek_id


def full_message() -> Message:
    return Message(
        id="id-1",
        task="proj.tasks.add",
        args=[1, "two", [3.5, None], {"k": True}],
        kwargs={"x": 1, "nested": {"a": [1, 2]}},
        queue="emails",
        priority=7,
        eta=1_700_000_000.25,
        expires=1_700_000_600.5,
        retries=2,
        parent_id="parent-1",
        root_id="root-1",
        ignore_result=True,
        headers={"trace": "abc", "n": 1},
    )


def envelope(**changes: Any) -> bytes:
    """A valid version-1 document as bytes, with some keys changed or removed (None value)."""
    doc: dict[str, Any] = orjson.loads(encode(Message(id="id-1", task="proj.tasks.add")))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return orjson.dumps(doc)


# --- round trip ------------------------------------------------------------------------------


def test_every_field_survives_encode_then_decode() -> None:
    # Given a message with every field set to a non-default value
    message = full_message()

    # When it goes through the wire format
    decoded = decode(encode(message))

    # Then it comes back equal, field by field
    assert decoded == message


def test_defaults_survive_encode_then_decode() -> None:
    # Given a message with only the required fields
    message = Message(id="id-2", task="t")

    # When it goes through the wire format
    decoded = decode(encode(message))

    # Then the defaults come back
    assert decoded == Message(id="id-2", task="t")
    assert decoded.queue == "celery"
    assert decoded.priority == 0
    assert decoded.retries == 0
    assert decoded.headers == {}


def test_encoded_document_carries_the_protocol_version_and_every_field() -> None:
    # Given a full message
    message = full_message()

    # When it is encoded
    doc = orjson.loads(encode(message))

    # Then the document holds the version and each field under its documented key
    assert doc == {
        "v": PROTOCOL_VERSION,
        "id": "id-1",
        "task": "proj.tasks.add",
        "args": [1, "two", [3.5, None], {"k": True}],
        "kwargs": {"x": 1, "nested": {"a": [1, 2]}},
        "queue": "emails",
        "priority": 7,
        "eta": 1_700_000_000.25,
        "expires": 1_700_000_600.5,
        "retries": 2,
        "parent_id": "parent-1",
        "root_id": "root-1",
        "ignore_result": True,
        "headers": {"trace": "abc", "n": 1},
    }


def test_integer_times_are_accepted_on_decode() -> None:
    # Given an envelope whose eta and expires are whole numbers (as other producers may send)
    body = envelope(eta=1_700_000_000, expires=1_700_000_100)

    # When it is decoded
    message = decode(body)

    # Then the times are kept
    assert message.eta == 1_700_000_000
    assert message.expires == 1_700_000_100


def test_optional_fields_may_be_absent() -> None:
    # Given an envelope with only the version and the required fields
    body = orjson.dumps(
        {"v": 1, "id": "i", "task": "t", "args": [], "kwargs": {}, "queue": "q", "priority": 0}
    )

    # When it is decoded
    message = decode(body)

    # Then the optional fields take their defaults
    assert message == Message(id="i", task="t", queue="q")


# --- encoding errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param([{1, 2}], {}, id="set-in-args"),
        pytest.param([], {"when": object()}, id="object-in-kwargs"),
    ],
)
def test_values_that_are_not_json_fail_at_encode_naming_the_task(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    # Given a message whose arguments hold a value JSON cannot carry
    message = Message(id="id-1", task="proj.tasks.send", args=args, kwargs=kwargs)

    # When it is encoded, Then EncodeError names the task
    with pytest.raises(EncodeError, match=r"proj\.tasks\.send"):
        encode(message)


def test_encode_error_is_also_a_type_error() -> None:
    # Given a message with a set argument
    message = Message(id="id-1", task="t", args=[{1}])

    # When it is encoded, Then the error can be caught as TypeError too
    with pytest.raises(TypeError):
        encode(message)


# --- decoding errors -------------------------------------------------------------------------


def test_invalid_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="invalid JSON"):
        decode(b"{not json")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_a_document_that_is_not_an_object_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="'v'"):
        decode(body)


def test_a_document_without_a_version_is_a_decode_error() -> None:
    # Given an envelope without "v"
    body = envelope(v=None)

    # When it is decoded, Then the error says the version field is missing
    with pytest.raises(DecodeError, match="no protocol version field 'v'"):
        decode(body)


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_an_unknown_version_is_a_decode_error_naming_that_version(version: object) -> None:
    # Given an envelope of a version this code does not speak
    body = envelope(v=version)

    # When it is decoded, Then the error names the version found and the one understood
    with pytest.raises(DecodeError) as caught:
        decode(body)
    assert f"version {version!r} is not supported" in str(caught.value)
    assert f"understands version {PROTOCOL_VERSION}" in str(caught.value)


@pytest.mark.parametrize("field", ["id", "task", "args", "kwargs", "queue", "priority"])
def test_a_missing_required_field_is_a_decode_error_naming_it(field: str) -> None:
    body = envelope(**{field: None})
    with pytest.raises(DecodeError, match=f"field '{field}' missing or of the wrong type"):
        decode(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("priority", True, id="priority-as-bool"),
        pytest.param("priority", "5", id="priority-as-str"),
        pytest.param("args", {"a": 1}, id="args-as-dict"),
        pytest.param("kwargs", [1], id="kwargs-as-list"),
        pytest.param("id", 7, id="id-as-int"),
        pytest.param("task", ["t"], id="task-as-list"),
        pytest.param("queue", 1, id="queue-as-int"),
    ],
)
def test_a_required_field_of_the_wrong_type_is_a_decode_error(field: str, value: object) -> None:
    body = envelope(**{field: value})
    with pytest.raises(DecodeError, match=f"field '{field}'"):
        decode(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eta", "tomorrow"),
        ("eta", True),
        ("expires", [1]),
        ("expires", False),
        ("retries", 1.5),
        ("retries", True),
        ("parent_id", 3),
        ("root_id", {}),
        ("ignore_result", "yes"),
        ("headers", []),
    ],
)
def test_an_optional_field_of_the_wrong_type_is_a_decode_error(field: str, value: object) -> None:
    body = envelope(**{field: value})
    with pytest.raises(DecodeError, match=f"field '{field}' has the wrong type"):
        decode(body)


def body_with(field: str, raw: bytes) -> bytes:
    """A valid envelope whose ``field`` is the JSON text ``raw`` (which may not be
    something ``orjson.dumps`` writes, such as ``1e400``)."""
    return envelope(**{field: "@"}).replace(b'"@"', raw)


@pytest.mark.parametrize("field", ["eta", "expires"])
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"253402300800.0", id="datetime-max-as-sent"),
        pytest.param(b"1e300", id="1e300"),
        pytest.param(b"-1e300", id="minus-1e300"),
        pytest.param(b"100000000000000000000000000000", id="huge-int"),
        pytest.param(b"-62135596801", id="before-year-1"),
    ],
)
def test_a_time_no_datetime_can_hold_is_a_decode_error_naming_the_field(
    field: str, raw: bytes
) -> None:
    # Given an envelope whose time is a number, but not one a worker can turn into a
    # datetime for the task's request
    body = body_with(field, raw)

    # When it is decoded, Then it fails naming the field
    with pytest.raises(DecodeError, match=f"field '{field}' is out of range"):
        decode(body)


@pytest.mark.parametrize("field", ["eta", "expires"])
def test_a_time_json_cannot_hold_is_a_decode_error(field: str) -> None:
    with pytest.raises(DecodeError):
        decode(body_with(field, b"1e400"))


@pytest.mark.parametrize("field", ["eta", "expires"])
@pytest.mark.parametrize("value", [253402300799.0, -62135596800, 0])
def test_the_first_and_last_times_a_datetime_can_hold_are_accepted(
    field: str, value: float
) -> None:
    assert getattr(decode(envelope(**{field: value})), field) == value


def test_decode_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        decode(b"")


# --- peek_id ---------------------------------------------------------------------------------


def test_peek_id_reads_the_id_of_a_message_that_does_not_decode() -> None:
    # Given a message of an unknown version (decode refuses it)
    body = envelope(v=99, id="keep-me")

    # When its id is peeked, Then it is found (the failure can be stored under it)
    assert peek_id(body) == "keep-me"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xfe garbage", id="not-json"),
        pytest.param(b"[1]", id="not-an-object"),
        pytest.param(b'{"v": 1}', id="no-id"),
        pytest.param(b'{"id": 5}', id="id-not-a-string"),
    ],
)
def test_peek_id_is_none_when_no_id_can_be_read(body: bytes) -> None:
    assert peek_id(body) is None


def test_new_ids_are_version_4_uuids_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(10_000)]

    assert len(set(ids)) == len(ids)
    for text in ids[:100]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
