"""Pages under docs/ that are generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from conveyor.brokers.redis.docs import render_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_redis_keys_and_scripts_page_matches_the_code() -> None:
    # Given the key layout and the scripts' headers as they are in the code
    expected = render_markdown()
    # Then docs/redis.md is exactly what `make docs` writes
    assert (DOCS / "redis.md").read_text() == expected, "run `make docs`"


def test_every_script_is_documented() -> None:
    page = (DOCS / "redis.md").read_text()
    scripts = Path(__file__).resolve().parents[2] / "src/conveyor/brokers/redis/scripts"
    for script in scripts.glob("*.lua"):
        assert f"`{script.name}`" in page
