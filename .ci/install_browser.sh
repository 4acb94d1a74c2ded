#!/usr/bin/env bash
# CI: Debian's Chromium for tests/test_browser.py (driven by playwright, which downloads no browser).
# Never fails: without Chromium the browser test skips, and says so.
set -uo pipefail

CHROMIUM=/usr/bin/chromium
if [[ -x "$CHROMIUM" ]]; then
    echo "install_browser: $CHROMIUM is already installed"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_browser: not root and no password-less sudo; Chromium not installed," \
             "tests/test_browser.py will skip" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; Chromium not installed, tests/test_browser.py will skip" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get update -qq \
    && "${SUDO[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends chromium >/dev/null \
    && [[ -x "$CHROMIUM" ]]; then
    echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
    echo "install_browser: could not install Debian's chromium (apt-get failed, see above);" \
         "tests/test_browser.py will skip" >&2
fi
exit 0
