"""Task results: the stored payload, and the handles that read it.

* ``payload``: the JSON a result is stored as, and the exception rebuilt from it;
* ``handle``: ``AsyncResult`` (generic in the task's return type) and ``EagerResult``,
  and the rule that a running task does not wait for results
  (``allow_join_result``);
* ``group``: ``GroupResult``, and results as JSON trees (children, saved groups).
"""

from __future__ import annotations

from conveyor.result.group import (
    GroupResult,
    add_children,
    group_record_key,
    result_from_tree,
    result_tree,
)
from conveyor.result.handle import (
    E_WOULDBLOCK,
    JUST_SENT,
    AsyncResult,
    EagerResult,
    allow_join_result,
    assert_will_not_block,
    denied_join_result,
)
from conveyor.result.payload import (
    CHILDREN,
    decode_payload,
    encode_failure,
    encode_state,
    encode_success,
    failure_of,
    payload_value,
    rebuild_exception,
    started_meta,
)

__all__ = [
    "CHILDREN",
    "E_WOULDBLOCK",
    "JUST_SENT",
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "add_children",
    "allow_join_result",
    "assert_will_not_block",
    "decode_payload",
    "denied_join_result",
    "encode_failure",
    "encode_state",
    "encode_success",
    "failure_of",
    "group_record_key",
    "payload_value",
    "rebuild_exception",
    "result_from_tree",
    "result_tree",
    "started_meta",
]
