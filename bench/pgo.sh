#!/usr/bin/env bash
# bench/pgo.sh (`make pgo`; `make bench` runs it): builds infergate with profile-guided
# optimisation on top of the `dist` profile (release plus link-time optimisation), at
# target/pgo/infergate, with the benchmark's examples beside it in target/pgo/examples.
#
#   1. an instrumented build (target/pgo/gen), which counts how often each branch and call runs;
#   2. a training run: that build serves bench/infergate.toml while wrk drives its routes (the
#      no-op plugin, digits and embed at 16 connections, embed and digits at one) for a few
#      seconds each; it writes its counts when it exits;
#   3. the counts merged with llvm-profdata (rustup's `llvm-tools` component, installed here);
#   4. the optimised build (target/pgo/use), which lays out hot code together and inlines and
#      orders branches by the counts.
#
# Needs wrk and ONNX Runtime (ORT_DYLIB_PATH, as the Makefile sets it) and builds the plugins
# the configuration loads. The instrumented build is incremental; the optimised one is a full
# build every time, since rustc records the counts' file as an input of every crate and each
# training writes it anew. On 2 cores: about 25 minutes the first time, 15 after.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HOST="$(rustc -vV | sed -n 's/^host: //p')"
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
PGO="$ROOT/target/pgo"
RAW="$PGO/raw"
MERGED="$PGO/merged.profdata"
URL="http://127.0.0.1:18080"
API_KEY="bench-key-0123456789abcdef"

log() { echo "pgo: $*" >&2; }

[[ -x "$PROFDATA" ]] || rustup component add llvm-tools
command -v wrk >/dev/null || { log "wrk is missing (apt-get install wrk)"; exit 1; }
[[ -n "${ORT_DYLIB_PATH:-}" ]] || { log "ORT_DYLIB_PATH is not set (make pgo sets it)"; exit 1; }

# build DIR FLAGS TARGETS...: `--target` keeps the flags off build scripts and procedural macros.
build() {
    local dir="$1" flags="$2"
    shift 2
    RUSTFLAGS="$flags" cargo build --profile dist --target "$HOST" --target-dir "$PGO/$dir" \
        --workspace "$@"
}

log "plugins"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml \
    --target-dir target/wasm -p noop -p infergate-digits -p infergate-embed
log "instrumented build"
build gen "-Cprofile-generate=$RAW" --bin infergate

log "training run"
rm -rf "$RAW"
mkdir -p "$RAW"
LLVM_PROFILE_FILE="$RAW/infergate-%p-%m.profraw" INFERGATE_LOG=warn \
    "$PGO/gen/$HOST/dist/infergate" serve --config bench/infergate.toml >"$PGO/train.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
    curl -sf -o /dev/null "$URL/readyz" && break
    kill -0 "$pid" 2>/dev/null || { cat "$PGO/train.log" >&2; exit 1; }
    sleep 0.1
done
drive() {
    local connections="$1" seconds="$2" path="$3" body="$4"
    BENCH_API_KEY="$API_KEY" BENCH_BODY_FILE="$body" \
        wrk -t "$((connections < 2 ? connections : 2))" -c "$connections" -d "${seconds}s" \
        -s bench/wrk.lua "$URL$path" >>"$PGO/train.log" 2>&1
}
drive 16 6 /noop/ping ""
drive 16 6 /digits/classify bench/requests/digits.json
drive 16 6 /embed/embeddings bench/requests/embed.json
drive 1 3 /embed/embeddings bench/requests/embed.json
drive 1 3 /digits/classify bench/requests/digits.json
# A few refusals, so their paths are not laid out as never taken.
for _ in $(seq 1 50); do
    curl -s -o /dev/null "$URL/digits/classify" -d '{}'
    curl -s -o /dev/null -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' \
        "$URL/digits/classify" -d '{"pixels": [1]}'
    curl -s -o /dev/null -H "X-API-Key: $API_KEY" "$URL/nowhere"
done
# The counts are written when the process exits.
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT
"$PROFDATA" merge -o "$MERGED" "$RAW"

log "optimised build"
build use "-Cprofile-use=$MERGED" --bin infergate
# The examples in a build of their own: built with the server, their dev-dependencies (tokio's
# `test-util`) would change the server's dependencies, and with them the code the counts are for.
build use "-Cprofile-use=$MERGED" --example floor --example bench_micro
# Replaced, not overwritten: a benchmark may be running a hard link to the previous build.
install_new() { cp "$1" "$2.new" && mv -f "$2.new" "$2"; }
mkdir -p "$PGO/examples"
install_new "$PGO/use/$HOST/dist/infergate" "$PGO/infergate"
for example in floor bench_micro; do
    install_new "$PGO/use/$HOST/dist/examples/$example" "$PGO/examples/$example"
done
log "built $PGO/infergate"
