#!/usr/bin/env bash
# bench/paired.sh BEFORE_CHECKOUT AFTER_CHECKOUT: paired rounds between two builds of the host,
# for "no throughput loss" checks. Each checkout must hold its build of PROFILE (`release`:
# `cargo build --release --workspace --bin infergate`) and its noop and digits plugins
# (target/wasm/wasm32-wasip2/release). Both serve the same config (auth, a limit rule, digits on
# ONNX Runtime, fresh instances), BEFORE on port 18080 and AFTER on 18090; wrk (bench/wrk.lua,
# 2 threads, 16 connections) drives noop then digits, the order of the builds alternating each
# round. Prints each round's requests/s, p99 and after/before ratio. Knobs: ROUNDS (6), DUR (6s),
# PROFILE (release; `dist` compares the builds `make serve` ships, as `make bench` measures);
# ORT_DYLIB_PATH must name libonnxruntime.so.
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: $0 BEFORE_CHECKOUT AFTER_CHECKOUT" >&2; exit 2; }
BEFORE="$(cd "$1" && pwd)"
AFTER="$(cd "$2" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS=${ROUNDS:-6}
DUR=${DUR:-6s}
PROFILE=${PROFILE:-release}
: "${ORT_DYLIB_PATH:?ORT_DYLIB_PATH must name libonnxruntime.so}"
W="$(mktemp -d)"

# shellcheck source=bench/host-config.sh
source "$HERE/host-config.sh"
config() { # name checkout port
    {
        host_config "$3" "$W" "$1" "$2"
        cat <<EOT
[[models]]
name = "digits"
path = "$HERE/../models/digits/digits.onnx"
backend = "onnxruntime"
concurrency = 2
queue_depth = 256
timeout_ms = 5000
max_batch = 1024
batching = { max_rows = 16 }
[[plugins]]
name = "digits"
path = "$2/target/wasm/wasm32-wasip2/release/digits.wasm"
models = ["digits"]
EOT
    } >"$W/$1.toml"
}
config before "$BEFORE" 18080
config after "$AFTER" 18090
"$BEFORE/target/$PROFILE/infergate" serve --config "$W/before.toml" >"$W/before.log" 2>&1 &
P1=$!
"$AFTER/target/$PROFILE/infergate" serve --config "$W/after.toml" >"$W/after.log" 2>&1 &
P2=$!
trap 'kill $P1 $P2 2>/dev/null; wait $P1 $P2 2>/dev/null; rm -rf "$W"' EXIT
for port in 18080 18090; do
    for _ in $(seq 600); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/readyz" || true)" == 200 ]] && break
        sleep 0.5
    done
done

export BENCH_API_KEY=bench-key-0123456789abcdef
# "requests/s p99_ms errors" of one wrk run against PORT on SCENARIO.
one() {
    local url=/noop/ping body=""
    if [[ "$2" == digits ]]; then url=/digits/classify body="$HERE/requests/digits.json"; fi
    BENCH_BODY_FILE="$body" wrk -t2 -c16 -d"$DUR" -s "$HERE/wrk.lua" "http://127.0.0.1:$1$url" |
        sed -n 's/^RESULT //p' |
        python3 -c 'import json, sys
r = json.load(sys.stdin)
e = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
print("%.0f %.1f %d" % (r["requests"] / r["duration_us"] * 1e6, r["p99_us"] / 1000, e))'
}
for s in noop digits; do one 18080 $s >/dev/null; one 18090 $s >/dev/null; done # warm-up
for r in $(seq "$ROUNDS"); do
    for s in noop digits; do
        if (( r % 2 )); then b=$(one 18080 $s); a=$(one 18090 $s); else a=$(one 18090 $s); b=$(one 18080 $s); fi
        read -r brps bp99 berr <<<"$b"
        read -r arps ap99 aerr <<<"$a"
        echo "round $r $s: before $brps req/s p99 $bp99 ms errors $berr; after $arps req/s p99 $ap99 ms errors $aerr; ratio $(python3 -c "print(f'{$arps / $brps:.3f}')")"
    done
done
