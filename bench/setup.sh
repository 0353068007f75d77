#!/usr/bin/env bash
# One virtual environment per peer (their redis-py ranges do not overlap: arq needs
# redis<6, kombu >=6.4) plus one for the chart, each from its pinned list in
# bench/requirements/<name>.txt. conveyor runs from the project's own .venv.
# Usage: bench/setup.sh PYTHON [--lock]   (--lock re-resolves the .in files)
set -euo pipefail
cd "$(dirname "$0")/.."
python="$1"
lock="${2:-}"
for req in bench/requirements/*.in; do
    name="$(basename "$req" .in)"
    venv=".bench/venvs/$name"
    pinned="bench/requirements/$name.txt"
    stamp="$venv/.installed"
    if [ -z "$lock" ] && [ -f "$stamp" ] && [ "$stamp" -nt "$pinned" ]; then
        continue
    fi
    echo "bench: setting up $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    if [ -n "$lock" ] || [ ! -f "$pinned" ]; then
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
        { echo "# Pinned by bench/setup.sh --lock from $name.in"; "$venv/bin/pip" freeze --disable-pip-version-check | sort; } > "$pinned"
    else
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$pinned"
    fi
    touch "$stamp"
done
