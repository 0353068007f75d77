"""HMAC-SHA256 signatures on message bodies: the producer signs, the worker verifies.

A signed body is the message's JSON with one more field, last: ``"sig"``, the
hex HMAC-SHA256 of the bytes before it (the JSON without that field), so a signed
body is still a conveyor message that tools can read::

    {"v":1,"id":"...","task":"proj.add",...,"headers":{}}            the message
    {"v":1,"id":"...","task":"proj.add",...,"headers":{},"sig":"9f2c..."}   signed

The signature is checked on those exact bytes, never on a re-encoding, and the
worker then decodes the bytes it checked. Keys rotate: the first key signs, any
key verifies (``message_signing_keys``). A signature proves who wrote a message,
not when: a copy of a signed message can be published again (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from conveyor.exceptions import DecodeError

FIELD = "sig"
_HEX_LEN = hashlib.sha256().digest_size * 2
# The field exactly as the signer appends it, at the very end of the body.
_SUFFIX = re.compile(rb',"' + FIELD.encode() + rb'":"([0-9a-f]{%d})"\}' % _HEX_LEN)
_SUFFIX_LEN = len(FIELD) + _HEX_LEN + 7  # ,"sig":"<hex>"}


def _digest(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def sign(body: bytes, keys: Sequence[bytes]) -> bytes:
    """``body`` (an encoded message: a JSON object) signed with the first of ``keys``;
    ``body`` itself when there are no keys (signing is off)."""
    if not keys:
        return body
    if not body.endswith(b"}") or body == b"{}":
        raise ValueError("only an encoded message (a JSON object with fields) can be signed")
    return b'%s,"%s":"%s"}' % (body[:-1], FIELD.encode(), _digest(keys[0], body).encode())


def verify(body: bytes, keys: Sequence[bytes]) -> bytes:
    """The message ``body`` holds, once one of ``keys`` verifies its signature; ``body``
    itself when there are no keys (nothing is required).

    Every key is tried, each with a constant-time comparison.

    Raises:
        DecodeError: the body is not signed, or no key made its signature; the message
            must not run.
    """
    if not keys:
        return body
    found = _SUFFIX.fullmatch(body, len(body) - _SUFFIX_LEN) if len(body) > _SUFFIX_LEN else None
    if found is None:
        raise DecodeError(
            "message is not signed, and this worker runs only signed messages "
            "(message_signing_keys is set)"
        )
    message = body[: found.start()] + b"}"
    signature = found.group(1).decode()
    matched = False
    for key in keys:
        # No early exit: how long this takes does not tell which key, if any, matched.
        matched |= hmac.compare_digest(_digest(key, message), signature)
    if not matched:
        raise DecodeError(
            "message signature matches none of this worker's message_signing_keys "
            "(forged, altered, or signed with a key that was retired)"
        )
    return message
