#!/usr/bin/env bash
# xdpmesh fuzzing (see fuzz/README.md).
#
#   fuzz/run.sh smoke                   replay every committed corpus (plain cargo test,
#                                       no AFL needed): what CI runs
#   fuzz/run.sh fuzz <target> <seconds> coverage-guided AFL++ run of one target
#                                       (needs `cargo install cargo-afl`)
#   fuzz/run.sh repro <target> <path>   replay one file or directory with backtraces
#   fuzz/run.sh tmin <target> <file>    minimise a crashing input (AFL++ afl-tmin)
#
# Targets: wire tables connect manifest config.
# Environment: CARGO_TARGET_DIR (default fuzz/target; the AFL-instrumented build goes to
# its afl/ subdirectory so the two builds never invalidate each other), FUZZ_JOBS
# (cargo -j, default 1), FUZZ_OUT (AFL output root, default fuzz/out).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
AFL_TARGET_DIR="$CARGO_TARGET_DIR/afl"
JOBS="${FUZZ_JOBS:-1}"
TARGETS="wire tables connect manifest config"

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
check_target() {
    case " $TARGETS " in *" $1 "*) ;; *) echo "unknown target $1 (have: $TARGETS)" >&2; exit 2 ;; esac
}
need_afl() {
    cargo afl --version >/dev/null 2>&1 || {
        echo "cargo-afl is missing: cargo install cargo-afl (builds AFL++ on stable Rust)" >&2
        exit 2
    }
}
build_afl() {
    need_afl
    # Our own flags stay out: cargo-afl sets the instrumentation, debug assertions and
    # overflow checks itself.
    CARGO_TARGET_DIR="$AFL_TARGET_DIR" \
        cargo afl build --release --locked -j"$JOBS" --features afl --bin "$1"
}

case "${1:-}" in
smoke)
    # The replay test, and the library's own unit tests.
    cargo test --locked -j"$JOBS" --lib --test replay
    ;;
fuzz)
    [ $# -eq 3 ] || usage
    t="$2" secs="$3"
    check_target "$t"
    build_afl "$t"
    out="${FUZZ_OUT:-$PWD/out}/$t"
    mkdir -p "$out"
    # One fuzzer process, not pinned to a core (shared machines); no core-pattern or
    # cpufreq checks (containers); resume when $out already has a run.
    export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        AFL_AUTORESUME=1 AFL_NO_UI=1 AFL_QUIET=1
    start=$(date +%s)
    cargo afl fuzz -V "$secs" -i "corpus/$t" -o "$out" -- "$AFL_TARGET_DIR/release/$t" \
        > "$out/afl.log" 2>&1 || { tail -30 "$out/afl.log" >&2; exit 1; }
    stats="$out/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
    crashes=$(get saved_crashes)
    echo "$t: $(( $(date +%s) - start ))s, execs_done=$(get execs_done)" \
        "execs_per_sec=$(get execs_per_sec) corpus_count=$(get corpus_count)" \
        "(seeds $(ls "corpus/$t" | wc -l)) edges_found=$(get edges_found)" \
        "bitmap_cvg=$(get bitmap_cvg) saved_crashes=$crashes saved_hangs=$(get saved_hangs)"
    if [ "${crashes:-0}" != 0 ]; then
        echo "crashes in $out/default/crashes/ (fuzz/run.sh repro $t <file>)" >&2
        exit 1
    fi
    ;;
repro)
    [ $# -eq 3 ] || usage
    check_target "$2"
    p="$(realpath "$3")"
    if [ -f "$p" ]; then
        d="$(mktemp -d)"; trap 'rm -rf "$d"' EXIT
        cp "$p" "$d/"; p="$d"
    fi
    RUST_BACKTRACE=1 FUZZ_REPLAY_DIR="$p" cargo test --locked -j"$JOBS" --test replay -- \
        --exact "$2" --nocapture
    ;;
tmin)
    [ $# -eq 3 ] || usage
    check_target "$2"
    build_afl "$2"
    AFL_SKIP_CPUFREQ=1 cargo afl tmin -i "$3" -o "$3.min" -- "$AFL_TARGET_DIR/release/$2"
    echo "minimised: $3.min"
    ;;
*) usage ;;
esac
