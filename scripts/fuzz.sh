#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer + AddressSanitizer) on the stable toolchain.
#
#   scripts/fuzz.sh --smoke                 every target for a few seconds (CI); non-zero on a crash
#   scripts/fuzz.sh TARGET [SECONDS] [-- LIBFUZZER_ARGS...]
#                                           one long run (default 600 s), optimised build
#   scripts/fuzz.sh --repro TARGET FILE     re-run one input (a crash artifact) and show the panic
#   scripts/fuzz.sh --list                  the targets
#
# Environment:
#   FUZZ_SMOKE_SECONDS   seconds per target in --smoke (default 5)
#   FUZZ_SANITIZER       address (default) or none (no ASan: faster, but also finds less)
#   FUZZ_TARGET_DIR      where to build (default fuzz/target); a directory outside the clone keeps
#                        the build between fresh clones on one machine
#   FUZZ_GATEWAY=1       build `chat_request` with the gateway's own parse_chat_request
#                        (links the whole gateway; first build takes several minutes)
#   OPTIROUTE_FUZZ_STRICT=1  also check invariants of reported, not yet fixed bugs
#
# cargo-fuzz asks rustc for `-Zsanitizer=address`, which stable rustc accepts only with
# RUSTC_BOOTSTRAP=1; the sanitizer runtime ships with the stable toolchain. The variable is set for
# every build here (changing it invalidates cargo's cache). The fuzz crate is its own workspace
# (fuzz/Cargo.toml) and builds into fuzz/target, never touching the main build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"
TARGETS=(sse_decode chat_request anthropic_request tgi_request anthropic_response tgi_response)
SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

die() {
    echo "fuzz.sh: $*" >&2
    exit 2
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: installing cargo-fuzz (one-off, about 2-3 minutes)"
        cargo install cargo-fuzz --locked --version "^0.13"
    fi
}

is_target() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ "$t" == "$1" ]] && return 0
    done
    return 1
}

# build_flags PROFILE: the cargo-fuzz flags shared by `build` and `run`.
build_flags() {
    local flags=("$1" "--sanitizer" "$SANITIZER")
    local target_dir="${FUZZ_TARGET_DIR:-$FUZZ_DIR/target}"
    if [[ "${FUZZ_GATEWAY:-0}" == 1 ]]; then
        # A separate target dir: the gateway's dependency features must not invalidate the
        # protocol-only build.
        flags+=("--features" "gateway" "--target-dir" "$target_dir/gateway")
    elif [[ -n "${FUZZ_TARGET_DIR:-}" ]]; then
        flags+=("--target-dir" "$target_dir")
    fi
    printf '%s\n' "${flags[@]}"
}

# run_target TARGET SECONDS PROFILE [LIBFUZZER_ARGS...]
run_target() {
    local target="$1" seconds="$2" profile="$3"
    shift 3
    local work="$FUZZ_DIR/target/corpus/$target"
    mkdir -p "$work" "$FUZZ_DIR/artifacts/$target"
    local args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1)
    if [[ "$target" == chat_request ]]; then
        args+=(-dict="$FUZZ_DIR/dict/json.dict")
    fi
    local flags
    mapfile -t flags < <(build_flags "$profile")
    # The first corpus dir collects what the fuzzer finds; the committed seeds are only read.
    (cd "$FUZZ_DIR" && cargo fuzz run "${flags[@]}" "$target" "$work" "$FUZZ_DIR/corpus/$target" -- \
        "${args[@]}" "$@")
}

smoke() {
    local seconds="${FUZZ_SMOKE_SECONDS:-5}" start end t_build failed=() t
    # Logs and the growing corpora live under fuzz/target even when the build is elsewhere.
    mkdir -p "$FUZZ_DIR/target"
    ensure_cargo_fuzz
    start=$(date +%s)
    local flags
    mapfile -t flags < <(build_flags --release)
    (cd "$FUZZ_DIR" && cargo fuzz build "${flags[@]}")
    end=$(date +%s)
    t_build=$((end - start))
    echo "fuzz.sh: build took ${t_build}s"
    for t in "${TARGETS[@]}"; do
        local log="$FUZZ_DIR/target/smoke-$t.log" t0
        t0=$(date +%s)
        if run_target "$t" "$seconds" --release >"$log" 2>&1; then
            echo "fuzz.sh: $t ok ($(grep -o 'Done [0-9]* runs' "$log" | tail -1 || true), $(($(date +%s) - t0))s)"
        else
            echo "fuzz.sh: $t FAILED; log: $log" >&2
            grep -E -A12 "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" | head -40 >&2 || tail -40 "$log" >&2
            grep -E "Test unit written to" "$log" >&2 || true
            failed+=("$t")
        fi
    done
    echo "fuzz.sh: smoke took $(($(date +%s) - start))s in all (build ${t_build}s, ${seconds}s per target)"
    if ((${#failed[@]})); then
        echo "fuzz.sh: crashes in: ${failed[*]} (reproduce: scripts/fuzz.sh --repro TARGET fuzz/artifacts/TARGET/crash-...)" >&2
        exit 1
    fi
}

case "${1:-}" in
    --smoke)
        smoke
        ;;
    --list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    --repro)
        [[ $# -eq 3 ]] || die "usage: scripts/fuzz.sh --repro TARGET FILE"
        is_target "$2" || die "unknown target $2 (see --list)"
        file="$(realpath "$3")"
        ensure_cargo_fuzz
        mapfile -t flags < <(build_flags --release)
        (cd "$FUZZ_DIR" && cargo fuzz fmt "${flags[@]}" "$2" "$file" || true)
        (cd "$FUZZ_DIR" && RUST_BACKTRACE=1 cargo fuzz run "${flags[@]}" "$2" "$file")
        ;;
    "" | -h | --help)
        sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        ;;
    -*)
        die "unknown option $1 (see --help)"
        ;;
    *)
        target="$1"
        shift
        is_target "$target" || die "unknown target $target (see --list)"
        seconds=600
        if [[ $# -gt 0 && "$1" != -- ]]; then
            seconds="$1"
            shift
        fi
        [[ "${1:-}" == -- ]] && shift
        ensure_cargo_fuzz
        run_target "$target" "$seconds" --release "$@"
        ;;
esac
