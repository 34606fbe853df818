#!/usr/bin/env bash
# Installs what the browser tests need, idempotently: Debian's chromium and its driver (apt, as root),
# and Selenium into the project's venv (pyproject's `browser` extra).
# Debian's packages, not a browser build downloaded by a tool: only the package registries are reachable
# on CI and developer machines, so Selenium is always handed /usr/bin/chromedriver (its own driver
# download, Selenium Manager, is never used).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "browser setup: $(chromium --version 2>/dev/null | head -1), chromedriver present"
else
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "browser setup: installing Debian's chromium and chromium-driver"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core >/dev/null
    chromium --version
fi

if ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
    echo "browser setup: installing selenium into $VENV"
    "$VENV/bin/python" -m pip install --quiet -e ".[browser]"
fi
"$VENV/bin/python" -c "import selenium; print('browser setup: selenium', selenium.__version__)"
