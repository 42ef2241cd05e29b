#!/usr/bin/env bash
# Install the independent MCP clients that tests/test_mcp_clients.py runs against
# `python -m supervisor serve` into .tools/clients/ (gitignored).
#
# Versions are pinned exactly in tests/clients/npm/package.json and the whole
# dependency tree in tests/clients/npm/package-lock.json; this script copies both
# into .tools/clients/ and runs `npm ci` there, so the install is reproducible from
# the npm registry alone. It needs only an `npm` on PATH. The TypeScript client
# needs Node >= 20: the tests run it on the system node when that is new enough,
# else on the Node 22 that scripts/setup-conformance.sh installs.
#
# Idempotent: when the installed lock file matches the committed one and the
# client package is in place, it only checks and exits (well under a second).
#
# Usage: bash scripts/setup-clients.sh [--force]
#   --force   wipe .tools/clients and install again
#
# The official Go SDK is not installed: it comes only from the Go module proxy
# (or GitHub), and Debian packages no MCP Go SDK.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/clients/npm"
DEST="$ROOT/.tools/clients"
CLIENT_PKG="$DEST/node_modules/@modelcontextprotocol/client/package.json"

say() { printf '[setup-clients] %s\n' "$*"; }

if [[ "${1:-}" == "--force" ]]; then
    say "--force: removing $DEST"
    rm -rf "$DEST"
fi

pinned() {
    # print the exact version pinned for package $1 in the committed package.json
    sed -n "s|.*\"$1\": *\"\\([^\"]*\\)\".*|\\1|p" "$SRC/package.json"
}
CLIENT_PIN="$(pinned @modelcontextprotocol/client)"

installed_version() {
    sed -n 's|^  "version": *"\([^"]*\)".*|\1|p' "$CLIENT_PKG" 2>/dev/null
}

installed_ok() {
    [[ -f "$CLIENT_PKG" ]] || return 1
    cmp -s "$SRC/package-lock.json" "$DEST/package-lock.json" || return 1
    cmp -s "$SRC/package.json" "$DEST/package.json" || return 1
    [[ "$(installed_version)" == "$CLIENT_PIN" ]] || return 1
}

if installed_ok; then
    say "already installed in ${DEST#"$ROOT"/} (lock file unchanged): nothing to do"
else
    if ! command -v npm >/dev/null 2>&1; then
        say "ERROR: npm not found on PATH (any Node >= 18 with npm will do)" >&2
        exit 1
    fi
    say "installing @modelcontextprotocol/client@$CLIENT_PIN into ${DEST#"$ROOT"/}" \
        "with npm ci (npm $(npm --version), node $(node --version))"
    mkdir -p "$DEST"
    cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/"
    (
        cd "$DEST"
        npm ci --no-audit --no-fund --ignore-scripts --engine-strict=false \
            --loglevel=error
    )
    if ! installed_ok; then
        say "ERROR: install finished but the check failed" >&2
        exit 1
    fi
    say "installed"
fi
say "typescript client: @modelcontextprotocol/client@$(installed_version)" \
    "(${DEST#"$ROOT"/}/node_modules)"
