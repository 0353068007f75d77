"""``python -m conveyor.config``: print docs/settings.md."""

import sys

from conveyor.config.markdown import render_markdown

sys.stdout.write(render_markdown())
