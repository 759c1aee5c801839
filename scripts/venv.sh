#!/usr/bin/env bash
# Creates .venv for the end-to-end suite and installs Tests/e2e/requirements.txt into it,
# again only when the requirements (or the Python) changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
requirements=Tests/e2e/requirements.txt
stamp=$venv/.requirements.stamp

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi

python_version=$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')
wanted="$(sha256sum "$requirements" | cut -d' ' -f1) $python_version"
if [[ -f $stamp && $(<"$stamp") == "$wanted" ]]; then
    exit 0
fi

echo "venv: installing $requirements into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
echo "$wanted" >"$stamp"
