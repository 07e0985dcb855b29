#!/usr/bin/env bash
# Installs the third-party clients of tests/transport_interop.rs that do not come from apt:
# npm packages (MQTT.js, Paho JavaScript, puppeteer-core) and a Python venv with paho-mqtt,
# under target/interop/ (ignored by git). Idempotent; .ci/run calls it, and the tests call it
# when something is missing. apt tools (mosquitto-clients, openssl, chromium, python3-venv,
# nodejs/npm) are .ci/run's job; this script fails with a message if one is missing.
#
#   tests/interop/setup.sh            (prints the install directory on the last line)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEST=${RINGMQ_INTEROP_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/interop}
mkdir -p "$DEST"

for tool in npm node /usr/bin/python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup.sh: $tool is missing (see .ci/run)" >&2; exit 1; }
done

if [ ! -f "$DEST/node/.done" ] || ! cmp -s "$HERE/package.json" "$DEST/node/package.json"; then
    mkdir -p "$DEST/node"
    cp "$HERE/package.json" "$DEST/node/package.json"
    # puppeteer-core never downloads a browser; the tests use Debian's chromium.
    (cd "$DEST/node" && npm install --no-audit --no-fund --loglevel=error >&2)
    touch "$DEST/node/.done"
fi

if [ ! -x "$DEST/venv/bin/python" ] || ! "$DEST/venv/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
    rm -rf "$DEST/venv"
    /usr/bin/python3 -m venv "$DEST/venv"
    "$DEST/venv/bin/pip" install --quiet 'paho-mqtt==2.2.0' >&2
fi
echo "$DEST"
