"""The chaos suite: many tasks through killed workers, restarted and stalled brokers.

See docs/reliability.md. ``engine.run`` runs one broker's chaos and returns its
report; ``python -m chaos`` (from tests/, as ``make chaos`` does) runs the full
version; test_chaos.py runs the short one inside ``make test``.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: tests/: ``redis_server``; tests/integration: ``harness`` and the ``apps`` workers run.
TESTS = Path(__file__).resolve().parent.parent
for _path in (TESTS, TESTS / "integration"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
