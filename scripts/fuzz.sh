#!/usr/bin/env bash
# Fuzzes the TollgateCore code that reads untrusted bytes with libFuzzer (`make fuzz`):
#   request  client request bodies (JSON parser, JSONDocument splicing, RequestInspector)
#   sse      upstream event streams (SSEParser at many split points, StreamRelay)
#   usage    usage objects (UsageExtractor, usage read by StreamRelay)
#
#   bash scripts/fuzz.sh [request|sse|usage ...]     (default: all three, one after the other)
#
# Settings (environment):
#   FUZZ_SECONDS=60       run time of each fuzzer
#   FUZZ_CONFIG=debug     swift build configuration; release runs about six times as many
#                         inputs per second (overflow and bounds checks trap in both)
#   FUZZ_MAX_LEN=8192     largest input libFuzzer generates, bytes
#   FUZZ_SCRATCH=/tmp/build-fuzz   build directory; also holds logs, new inputs and artifacts
#   FUZZ_MERGE=0          1: afterwards, add to Tests/Fuzz/corpus/<fuzzer>/ a smallest set of
#                         new inputs (each at most FUZZ_MERGE_MAX_LEN=96 bytes) that reaches
#                         every code edge they add; review them before committing
#
# The fuzzers (the Fuzz/ package) check the invariants in FuzzHarness, the file that
# `make test` also compiles to replay Tests/Fuzz/corpus/. The corpus folder is only read;
# new inputs go to $FUZZ_SCRATCH/inputs/<fuzzer>/. An input that crashes a fuzzer is copied to
# Tests/Fuzz/corpus/<fuzzer>/crash-<sha1>, so `make test` fails on it until the bug is fixed.
# Exits non-zero when a fuzzer found a crash, a timeout or an out-of-memory input.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${FUZZ_SECONDS:-60}
config=${FUZZ_CONFIG:-debug}
max_len=${FUZZ_MAX_LEN:-8192}
scratch=${FUZZ_SCRATCH:-/tmp/build-fuzz}
merge=${FUZZ_MERGE:-0}
merge_max_len=${FUZZ_MERGE_MAX_LEN:-96}
targets=("$@")
(( ${#targets[@]} )) || targets=(request sse usage)

declare -A executables=([request]=RequestFuzzer [sse]=SSEFuzzer [usage]=UsageFuzzer)
for target in "${targets[@]}"; do
    [[ -n ${executables[$target]:-} ]] || { echo "fuzz.sh: unknown fuzzer '$target' (request, sse, usage)"; exit 2; }
done

echo "==> building the fuzzers (Fuzz/, $config, -sanitize=fuzzer,address, scratch $scratch)"
mkdir -p "$scratch/logs"
# The linker warns about every sanitizer helper it cannot export; show the log only on failure.
if ! swift build --package-path Fuzz -c "$config" --scratch-path "$scratch" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library >"$scratch/logs/build.log" 2>&1; then
    grep -v 'ld.gold: warning: Cannot export local symbol' "$scratch/logs/build.log" | tail -40
    echo "fuzz.sh: build failed; full log $scratch/logs/build.log"
    exit 1
fi
bin=$(swift build --package-path Fuzz -c "$config" --scratch-path "$scratch" --show-bin-path)

failed=()
summaries=()
for target in "${targets[@]}"; do
    corpus=Tests/Fuzz/corpus/$target
    inputs=$scratch/inputs/$target
    artifacts=$scratch/artifacts/$target
    log=$scratch/logs/$target.log
    dict=$scratch/$target.dict
    rm -rf "$artifacts"
    mkdir -p "$inputs" "$artifacts"
    cat Fuzz/Dictionaries/json.dict "Fuzz/Dictionaries/$target.dict" >"$dict"

    echo "==> fuzzing $target for $seconds s (log $log)"
    status=0
    "$bin/${executables[$target]}" "$inputs" "$corpus" -max_total_time="$seconds" -max_len="$max_len" \
        -timeout=10 -rss_limit_mb=2048 -dict="$dict" -artifact_prefix="$artifacts/" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?

    # The last status line ("#N DONE cov: … ft: … corp: …") and the final stats.
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    coverage=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' <<<"$last" || echo 'cov ?')
    corpus_size=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" || echo 'corp ?')
    summaries+=("$target: ${runs:-?} runs, ${rate:-?} exec/s, $coverage, $corpus_size")

    found=("$artifacts"/*)
    if (( status != 0 )) || [[ -e ${found[0]} ]]; then
        failed+=("$target")
        grep -E 'ERROR|invariant broken|Fatal error|SUMMARY|deadly signal' "$log" | head -20 || true
        for artifact in "${found[@]}"; do
            [[ -e $artifact ]] || continue
            saved=$corpus/$(basename "$artifact")
            cp "$artifact" "$saved"
            echo "fuzz.sh: $target: input saved as $saved"
        done
    fi

    if [[ $merge == 1 ]]; then
        # Only small inputs are candidates; edges alone count (no hit counts, no comparisons),
        # which keeps the additions few.
        small=$scratch/small/$target
        rm -rf "$small"
        mkdir -p "$small"
        find "$inputs" -type f -size -$((merge_max_len + 1))c -exec cp {} "$small/" \;
        before=$(ls "$corpus" | wc -l)
        "$bin/${executables[$target]}" -set_cover_merge=1 -use_counters=0 -use_cmp=0 -max_len="$merge_max_len" \
            "$corpus" "$small" >"$scratch/logs/$target-merge.log" 2>&1
        echo "fuzz.sh: $target: corpus $before → $(ls "$corpus" | wc -l) inputs"
    fi
done

echo "==> summary ($seconds s each)"
printf '  %s\n' "${summaries[@]}"
if (( ${#failed[@]} )); then
    echo "fuzz.sh: FAILED: ${failed[*]} (logs in $scratch/logs/)"
    exit 1
fi
echo "fuzz.sh: no crash"
