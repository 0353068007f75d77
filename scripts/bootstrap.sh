#!/usr/bin/env bash
# Creates the project's virtualenv with pinned dependencies; installs what a
# fresh Debian machine lacks (python3-venv) when running as root.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "conveyor needs Python 3.11 or newer (found: $("$python" --version 2>&1))." >&2
    exit 1
fi

if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt-get update -qq && apt-get install -y -qq "python${ver}-venv" >/dev/null
    else
        echo "Python's venv module is missing: install it with 'sudo apt-get install python3-venv'." >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements/dev.txt
"$venv/bin/python" -m pip install -q --no-deps -e .
