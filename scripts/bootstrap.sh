#!/usr/bin/env bash
# Idempotent set-up: Debian's WordNet files (when apt is usable), a .venv in the repo with webly
# and its test tools. A stamp keyed on pyproject.toml makes a second run a no-op.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

# WordNet 3.0 from Debian, used offline by NLTK (see `webly wordnet`).
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian's wordnet-base and wordnet-sense-index" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
fi

stamp=".venv/.webly-stamp"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing webly (first run only, a few minutes)" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
log=.venv/install.log
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[dev,export]"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "[setup] pip install failed; full log in $log" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "[setup] done" >&2
