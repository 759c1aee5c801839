#!/usr/bin/env bash
# Runs the end-to-end suite against sanitizer builds of the worker (`make sanitize`):
# first AddressSanitizer, then ThreadSanitizer, each a debug build in a scratch directory of
# its own (/tmp/build-san-address, /tmp/build-san-thread) so .build/ is left alone.
#
#   bash scripts/sanitize.sh [address|thread ...] [-- PYTEST ARGS]
#       (default: both sanitizers, in that order; e.g. `-- -x -k "hostile or metering"`)
#
# Settings (environment):
#   SANITIZE_LEAKS=1       0: no LeakSanitizer check when a process exits (ASan only)
#
# The suite starts its stacks through scripts/stack.py, which runs the binary named by
# TOLLGATE_BINARY. Each process writes its sanitizer reports to its own file
# (log_path=<scratch>/reports/<sanitizer>.<pid>); the stack logs (.run/*/tollgate.log) are
# scanned as well, for a report written to standard error. Exits non-zero when any
# sanitizer reported, or when the suite failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sanitizers=()
while (( $# )) && [[ $1 != -- ]]; do
    sanitizers+=("$1")
    shift
done
[[ ${1:-} == -- ]] && shift
pytest_args=("$@")
(( ${#sanitizers[@]} )) || sanitizers=(address thread)
for sanitizer in "${sanitizers[@]}"; do
    [[ $sanitizer == address || $sanitizer == thread ]] || { echo "sanitize.sh: unknown '$sanitizer'"; exit 2; }
done

# A run that dies half-way must not leave nginx, workers or mocks running.
trap 'python3 scripts/stack.py stop --all >/dev/null 2>&1 || true' EXIT

bash scripts/deps.sh
bash scripts/venv.sh

# Lines that only a sanitizer writes.
report_pattern='ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|ThreadSanitizer: '
report_pattern+='|SUMMARY: [A-Za-z]+Sanitizer|runtime error: '

failures=()
for sanitizer in "${sanitizers[@]}"; do
    scratch=/tmp/build-san-$sanitizer
    reports=$scratch/reports
    echo "==> $sanitizer: debug build with -sanitize=$sanitizer (scratch $scratch)"
    mkdir -p "$scratch"
    if ! swift build -c debug -Xswiftc "-sanitize=$sanitizer" --scratch-path "$scratch" --product tollgate \
        >"$scratch/build.log" 2>&1; then
        grep -v 'ld.gold: warning: Cannot export local symbol' "$scratch/build.log" | tail -40
        failures+=("$sanitizer: build failed ($scratch/build.log)")
        continue
    fi
    binary=$(swift build -c debug --scratch-path "$scratch" --show-bin-path)/tollgate
    # `tollgate migrate` looks for sql/ in the directories above its executable, and stacks
    # do not pass TOLLGATE_SQL_DIR on: a link in the scratch directory lets the binary find it.
    ln -sfn "$PWD/sql" "$scratch/sql"
    rm -rf "$reports"
    mkdir -p "$reports"

    # LeakSanitizer checks each process (supervisor, workers, admin commands) as it exits; a
    # leak also sets the exit status to 23, which the supervisor tests then notice.
    leaks=${SANITIZE_LEAKS:-1}
    echo "==> $sanitizer: end-to-end suite against $binary"
    touch "$reports/.started"
    suite=0
    TOLLGATE_BINARY=$binary \
        ASAN_OPTIONS="log_path=$reports/address:detect_leaks=$leaks:${ASAN_OPTIONS:-}" \
        TSAN_OPTIONS="log_path=$reports/thread:halt_on_error=0:second_deadlock_stack=1:${TSAN_OPTIONS:-}" \
        .venv/bin/pytest -q -p no:cacheprovider "${pytest_args[@]}" Tests/e2e 2>&1 \
        | tee "$scratch/e2e.log" || suite=$?

    # Keep the stack logs of this run (older ones belong to other runs): the next run's
    # stacks overwrite them.
    found=0
    for log in .run/*/tollgate.log; do
        [[ -f $log && $log -nt $reports/.started ]] || continue
        cp "$log" "$reports/stack-$(basename "$(dirname "$log")").log"
        if grep -qE "$report_pattern" "$log"; then
            found=1
            echo "--- sanitizer output in $log:"
            grep -E -A12 "$report_pattern" "$log" | head -60
        fi
    done
    for report in "$reports/$sanitizer".*; do
        [[ -s $report ]] || continue
        found=1
        echo "--- $report:"
        head -60 "$report"
    done

    if (( found )); then
        failures+=("$sanitizer: sanitizer reports (see $reports/)")
    fi
    if (( suite != 0 )); then
        failures+=("$sanitizer: end-to-end suite failed (exit $suite; $scratch/e2e.log)")
    fi
    if (( ! found && suite == 0 )); then
        echo "==> $sanitizer: no report, suite passed"
    fi
done

if (( ${#failures[@]} )); then
    printf 'sanitize.sh: FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "sanitize.sh: no sanitizer report (${sanitizers[*]})"
