#!/usr/bin/env bash
# Makes sure Chromium and its WebDriver are installed: the dashboard's tests drive a
# headless Chromium through /usr/bin/chromedriver (Selenium never downloads a driver).
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "The dashboard tests need ${missing[*]}: install it with 'sudo apt-get install ${missing[*]}'." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
