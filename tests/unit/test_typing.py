"""The typed API, checked by mypy itself: ``tests/typing`` holds modules whose
``assert_type`` lines must hold and whose ``# type: ignore[...]`` lines must be errors
(``warn_unused_ignores`` makes an ignore that silences nothing an error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_accepts_the_typed_api_and_refuses_the_misuses() -> None:
    # Given the modules of tests/typing (each one what users write)
    # When mypy checks them strictly, as users' projects would
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "tests/typing",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then every assertion holds and every expected error is one
    assert done.returncode == 0, done.stdout + done.stderr
