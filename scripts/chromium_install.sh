#!/usr/bin/env bash
# Chromium for the browser test (tests/test_mlflow_ui.py): Debian's `chromium` package, driven by
# Playwright (a test extra, `pip install -e '.[test]'`) through its executable path, so Playwright
# downloads no browser of its own. Needs root (apt-get); prints the path the test finds.
#
#   scripts/chromium_install.sh
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "chromium_install: must run as root (apt-get)" >&2; exit 1; }
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
# Debian's wrapper script reads /etc/chromium.d; the version proves the binary starts
chromium --headless --no-sandbox --version
command -v chromium
