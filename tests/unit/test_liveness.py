"""The heartbeat file: what the worker writes, and how ``worker-health`` judges it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.exceptions import ConfigurationError
from conveyor.worker.liveness import HeartbeatFile, check

NOW = 1_700_000_000.0


def write(path: Path, **fields: object) -> Path:
    """A heartbeat file of this process on this host, fresh at NOW, with ``fields`` changed."""
    beat = {
        "pid": os.getpid(),
        "fetch_alive": NOW,
        "written": NOW,
        "hostname": socket.gethostname(),
    }
    path.write_text(json.dumps({**beat, **fields}))
    return path


def test_a_fresh_file_of_a_live_process_is_alive(tmp_path: Path) -> None:
    # Given a file written 5 s ago by this (live) process, its fetch loop alive 8 s ago
    path = write(tmp_path / "hb.json", fetch_alive=NOW - 8, written=NOW - 5)

    # When it is checked with a 60 s max age
    health = check(path, 60, now=NOW)

    # Then it is alive
    assert health.ok
    assert health.reason == f"ok: pid {os.getpid()}, fetch loop alive 8.0 s ago"


def test_a_stalled_fetch_loop_is_stale_though_the_file_is_rewritten(tmp_path: Path) -> None:
    # Given a file rewritten just now whose fetch loop made no progress for 75 s
    path = write(tmp_path / "hb.json", fetch_alive=NOW - 75)

    # When it is checked with a 60 s max age
    health = check(path, 60, now=NOW)

    # Then it is stale, saying the fetch loop stalled and for how long
    assert not health.ok
    assert health.reason == (
        f"stale: the fetch loop of pid {os.getpid()} made no progress for 75 s (max 60 s)"
    )


def test_a_file_no_longer_rewritten_is_stale(tmp_path: Path) -> None:
    # Given a file last written 61 s ago (the worker frozen)
    path = write(tmp_path / "hb.json", fetch_alive=NOW - 62, written=NOW - 61)

    # When it is checked with a 60 s max age
    health = check(path, 60, now=NOW)

    # Then it is stale, saying the file was not rewritten
    assert not health.ok
    assert health.reason.startswith(f"stale: {path} not rewritten for 61 s (max 60 s;")


def test_a_missing_file_is_not_alive(tmp_path: Path) -> None:
    # When a file that does not exist is checked
    health = check(tmp_path / "hb.json", 60, now=NOW)

    # Then it is not alive, saying the file is missing
    assert not health.ok
    assert "hb.json is missing" in health.reason


@pytest.mark.parametrize("content", ["", "{", "[]", '{"pid": 1}', '{"pid": "x", "fetch_alive": 1}'])
def test_a_garbled_file_is_not_alive(tmp_path: Path, content: str) -> None:
    # Given a file that is no heartbeat
    path = tmp_path / "hb.json"
    path.write_text(content)

    # When it is checked
    health = check(path, 60, now=NOW)

    # Then it is not alive, saying the file is unreadable
    assert not health.ok
    assert "is unreadable" in health.reason


def test_a_file_of_a_process_that_is_gone_is_not_alive(tmp_path: Path) -> None:
    # Given a fresh file whose pid has exited (and been reaped)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = write(tmp_path / "hb.json", pid=int(gone.stdout))

    # When it is checked
    health = check(path, 60, now=NOW)

    # Then it is not alive, saying the pid is gone
    assert not health.ok
    assert health.reason.startswith(f"pid {int(gone.stdout)} is gone")


def test_a_file_written_on_another_host_is_not_alive(tmp_path: Path) -> None:
    # Given a fresh file written on another host (its pid means nothing here)
    path = write(tmp_path / "hb.json", hostname=socket.gethostname() + "-elsewhere")

    # When it is checked
    health = check(path, 60, now=NOW)

    # Then it is not alive, saying where it was written
    assert not health.ok
    assert "was written on host" in health.reason


def test_the_worker_side_writes_a_fresh_record_and_removes_only_its_own_file(
    tmp_path: Path,
) -> None:
    # Given a heartbeat file kept by this process
    path = tmp_path / "hb.json"
    heartbeat = HeartbeatFile(path, every=0)

    # When the fetch loop is reported alive 2 s ago
    heartbeat.update(fetch_age=2.0)

    # Then the file holds this process and that time, and a probe finds it alive
    beat = json.loads(path.read_text())
    assert beat["pid"] == os.getpid()
    assert 1.5 < beat["written"] - beat["fetch_alive"] < 2.5
    assert check(path, 60).ok
    assert [p.name for p in tmp_path.iterdir()] == ["hb.json"]  # no temporary file left
    # ... removing it deletes it, but not once another process has taken the path over
    heartbeat.remove()
    assert not path.exists()
    write(path, pid=os.getpid() + 1)
    heartbeat.remove()
    assert path.exists()


def test_a_heartbeat_file_that_cannot_be_written_fails_at_start(tmp_path: Path) -> None:
    # When the worker's heartbeat file is in a directory that does not exist
    # Then it fails at once, naming the file
    with pytest.raises(ConfigurationError, match=r"cannot write the heartbeat file .*nowhere"):
        HeartbeatFile(tmp_path / "nowhere" / "hb.json")
