#!/usr/bin/env bash
# One virtual environment per peer (their redis-py ranges do not overlap: arq needs
# redis<6, kombu >=6.4) plus one for the chart, each from its pinned list in
# bench/requirements/<name>.txt, built side by side. conveyor runs from the
# project's own .venv.
# Usage: bench/setup.sh PYTHON [--lock]   (--lock re-resolves the .in files)
set -euo pipefail
cd "$(dirname "$0")/.."
python="$1"
lock="${2:-}"

build() {
    local name="$1" venv=".bench/venvs/$1" pinned="bench/requirements/$1.txt"
    local req="bench/requirements/$1.in" log=".bench/$1.log"
    rm -rf "$venv"
    {
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
        if [ -n "$lock" ] || [ ! -f "$pinned" ]; then
            "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
            { echo "# Pinned by bench/setup.sh --lock from $name.in"
              "$venv/bin/pip" freeze --disable-pip-version-check | sort; } > "$pinned"
        else
            "$venv/bin/pip" install -q --disable-pip-version-check -r "$pinned"
        fi
        touch "$venv/.installed"
    } > "$log" 2>&1 || { echo "bench: setting up $venv failed:" >&2; tail -20 "$log" >&2; return 1; }
}

mkdir -p .bench/venvs
pids=()
for req in bench/requirements/*.in; do
    name="$(basename "$req" .in)"
    stamp=".bench/venvs/$name/.installed"
    if [ -z "$lock" ] && [ -f "$stamp" ] && [ "$stamp" -nt "bench/requirements/$name.txt" ]; then
        continue
    fi
    echo "bench: setting up .bench/venvs/$name"
    build "$name" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
exit $status
