"""The deployment tutorial our users follow, step by step, on conveyor and real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[2] / "examples" / "tutorial"


def test_the_tutorial_runs_with_only_the_import_and_command_name_changed(
    redis_url: str, tmp_path: Path
) -> None:
    # Given the tutorial's app, REDIS_URL set as the platform would inject it
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(TUTORIAL)}
    env.pop("CONVEYOR_BROKER_URL", None)
    env.pop("RESULT_BACKEND", None)
    log = (tmp_path / "worker.log").open("wb")
    # When the worker service runs the tutorial's command
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "-A",
            "app.celery_app",
            "worker",
            "--concurrency=4",
            "--loglevel=info",
        ],
        cwd=TUTORIAL,
        env=env,
        stderr=log,
        stdout=log,
        start_new_session=True,
    )
    try:
        # ... and the web app enqueues the way the tutorial does
        producer = subprocess.run(
            [
                sys.executable,
                "-c",
                "from app.celery_app import send_welcome_email\n"
                "r = send_welcome_email.delay(42)\n"
                "print(r.get(timeout=30))",
            ],
            cwd=TUTORIAL,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Then the task ran on the worker and its result came back through Redis
        assert producer.returncode == 0, producer.stderr
        assert producer.stdout.strip() == "welcome mail sent to user 42"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            pytest.fail("worker did not stop on SIGTERM")
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert code == 0, text
    # and the banner said which broker it used (the URL has no password to hide here)
    assert redis_url in text
    assert "concurrency 4" in text
