#!/usr/bin/env bash
# Run webly's built-in demo (installs what it needs on the first run). Extra args go to `webly demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/webly demo "$@"
