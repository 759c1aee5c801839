#!/usr/bin/env bash
# Full test run, as CI does it (.ci/run → make test): dependencies, the Python venv, the
# release build, Swift unit tests, then the end-to-end suite (which starts its own stacks
# through scripts/stack.py). Exits non-zero if any step fails; the last line sums up.
#
# The store's integration tests (Tests/TollgateStoreTests) need PostgreSQL: unless
# TOLLGATE_TEST_DATABASE_URL is already set, a private cluster (stack name "unit", port
# TOLLGATE_TEST_PG_PORT or 25440, below Linux's range of ephemeral ports so that no client
# connection's leftover holds it) is started for `swift test` and removed right after it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
logs=.run/test
mkdir -p "$logs"

# A suite that dies half-way must not leave nginx, workers, mocks or PostgreSQL running.
trap 'python3 scripts/stack.py stop --all >/dev/null 2>&1 || true' EXIT

failed_at() {
    echo "test.sh: FAILED at $1 after $((SECONDS - started)) s"
    exit 1
}

echo "==> dependencies"
bash scripts/deps.sh || failed_at "dependencies (scripts/deps.sh)"
echo "==> python venv"
bash scripts/venv.sh || failed_at "python venv (scripts/venv.sh)"
echo "==> release build"
swift build -c release || failed_at "release build"

echo "==> test database (PostgreSQL for the store's integration tests)"
own_database=0
if [[ -n ${TOLLGATE_TEST_DATABASE_URL:-} ]]; then
    # Never echoed: a caller's URL may carry a password.
    echo "using TOLLGATE_TEST_DATABASE_URL from the environment"
    test_database_url=$TOLLGATE_TEST_DATABASE_URL
else
    test_database_url=$(python3 scripts/stack.py db-start --name unit --pg-port "${TOLLGATE_TEST_PG_PORT:-25440}") \
        || failed_at "test database (scripts/stack.py db-start)"
    own_database=1
    echo "TOLLGATE_TEST_DATABASE_URL=$test_database_url"
fi

echo "==> unit tests (swift test)"
unit=0
TOLLGATE_TEST_DATABASE_URL=$test_database_url swift test 2>&1 | tee "$logs/unit.log" || unit=$?
if (( own_database )); then
    python3 scripts/stack.py db-stop --name unit || echo "test.sh: db-stop failed; the exit trap stops the database"
fi

echo "==> end-to-end tests (pytest Tests/e2e)"
e2e=0
.venv/bin/pytest -q -p no:cacheprovider Tests/e2e 2>&1 | tee "$logs/e2e.log" || e2e=$?

# Adds up the runners' own result lines into one "N passed, N failed" line.
python3 - "$logs/unit.log" "$logs/e2e.log" "$unit" "$e2e" "$((SECONDS - started))" <<'PY'
import re
import sys

unit_log, e2e_log, unit_status, e2e_status, seconds = sys.argv[1:]
unit = open(unit_log, errors="replace").read()
e2e = open(e2e_log, errors="replace").read()
counts = {"passed": 0, "failed": 0, "skipped": 0}
missing = []

runs = re.findall(r"Test run with (\d+) tests?\b", unit)
xctest = re.findall(r"Executed (\d+) tests?, with (\d+) failures?", unit)
if runs or xctest:
    swift_failed = len(re.findall(r"^✘ Test (?!run ).* failed after", unit, re.M))
    total = int(runs[-1]) if runs else 0
    counts["passed"] += total - swift_failed
    counts["failed"] += swift_failed
    if xctest:
        executed, failures = map(int, xctest[-1])
        counts["passed"] += executed - failures
        counts["failed"] += failures
else:
    missing.append("swift test")

closing = re.compile(r"\b(passed|failed|errors?|no tests ran)\b.* in [\d.]+s")
result = [line for line in e2e.splitlines() if closing.search(line)]
if result:
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", result[-1]):
        counts["failed" if word.startswith("error") else word] += int(number)
else:
    missing.append("pytest")

verdict = lambda status: "ok" if status == "0" else f"FAILED (exit {status})"
print(f"test.sh: unit tests {verdict(unit_status)}, end-to-end tests {verdict(e2e_status)}, {seconds} s")
if missing:
    print(f"test.sh: no result line from {' and '.join(missing)}; see .run/test/")
else:
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    print(f"test.sh: {counts['passed']} passed, {counts['failed']} failed{skipped}")
PY

if (( unit != 0 || e2e != 0 )); then
    exit 1
fi
