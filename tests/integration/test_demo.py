"""``make demo``: the quickstart example runs end to end on a fresh SQLite file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "demo.py"

pytestmark = pytest.mark.slow


def test_quickstart_demo_runs_every_task_and_shuts_the_worker_down_cleanly(
    tmp_path: Path,
) -> None:
    # Given a machine with no conveyor configuration (the demo makes its own SQLite file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["TMPDIR"] = str(tmp_path)  # the demo's working directory goes with the test's
    env["COLUMNS"] = "200"  # a wide terminal: rich wraps nothing

    # When `make demo` runs it with the project's interpreter
    ran = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=DEMO.parents[2],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    # Then it succeeds and prints the summary: 300 tasks, the expected failures, a clean stop
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert "enqueued 300 tasks" in output
    assert "300 tasks in" in output
    assert re.search(
        r"send_welcome_email\W+180\W+20\W+ValueError: user 10 has no e-mail address", output
    )
    assert re.search(r"\Wadd\W+100\W+0\W", output)
    assert "worker shut down cleanly (exit code 0)" in output
    assert list(tmp_path.glob("conveyor-demo-*/conveyor.sqlite3"))
