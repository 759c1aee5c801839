#!/usr/bin/env bash
# Installs the Debian packages Tollgate builds, runs and tests with, only those missing.
# Idempotent and quiet when everything is present. Runs as root, or through sudo.
set -euo pipefail

packages=(
    libfcgi-dev            # the FastCGI protocol definitions (fastcgi.h) the workers speak
    libcurl4-openssl-dev   # upstream client
    libpq-dev              # usage ledger (PostgreSQL client)
    pkg-config             # SwiftPM finds the three libraries above through it
    nginx
    postgresql             # private clusters of make run, the test suites (scripts/pg.py)
    postgresql-client      # psql, used by scripts/pg.py and the tests
    wrk                    # benchmarks
    python3
    python3-venv           # the end-to-end suite's .venv
    procps                 # ps, used when debugging worker pools
)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    if [[ $status != installed ]]; then
        missing+=("$package")
    fi
done

if (( ${#missing[@]} == 0 )); then
    exit 0
fi

if (( EUID == 0 )); then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "deps: missing ${missing[*]}; run this script as root or install sudo" >&2
    exit 1
fi

echo "deps: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
