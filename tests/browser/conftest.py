"""Fixtures of the dashboard's tests: one running system and one browser per module.

The system (see ``stack.py``) has its own redis-server, so that no other test's flush
reaches it, a worker started with ``-E`` and ``conveyor dashboard`` as a subprocess.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `stack`, any import mode

from stack import Stack, chromium, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A redis-server, worker ``dash1`` (-E, prefork of 2) and the dashboard."""
    with running_stack(tmp_path_factory.mktemp("dashboard")) as running:
        running.start_worker("dash1@%h", "-c", "2")
        running.start_dashboard()
        yield running
        print(running.logs())  # shown when a test of the module failed


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module."""
    driver: Any = chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
