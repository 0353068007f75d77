#!/usr/bin/env bash
# Makes sure redis-server (and openssl, for the TLS tests) are installed: the tests
# start their own servers, so Debian's system service is stopped and disabled.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "The tests need ${missing[*]}: install it with 'sudo apt-get install ${missing[*]}'." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# The package starts a server on 6379; the tests want none running behind their back.
if command -v systemctl >/dev/null; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if command -v service >/dev/null; then
    service redis-server stop >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null
