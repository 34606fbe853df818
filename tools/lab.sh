#!/usr/bin/env bash
# Starts JupyterLab the one way the project does: `make lab` and the browser tests (tests/browser) both call
# this, so what the tests prove is what a person gets.
# * The server root is the repository, not notebooks/: a notebook's report links to files under runs/, and
#   a person must be able to open runs/<name>/ from the file browser. The browser opens on notebooks/.
# * Loopback only (127.0.0.1): the server runs code for whoever holds its token.
# * As root (CI, containers) Jupyter refuses to start without --allow-root; it is passed only then.
# Extra arguments go to `jupyter lab` (the tests add a port, a token and their own settings folder).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
args=(--ip=127.0.0.1 "--ServerApp.root_dir=$PWD" --LabApp.default_url=/lab/tree/notebooks)
if [ "$(id -u)" = 0 ]; then
    args+=(--allow-root)
fi
exec "$VENV/bin/jupyter" lab "${args[@]}" "$@"
