#!/usr/bin/env bash
# bench/instructions.sh CHECKOUT... : the host's user-space instructions per request, counted
# by valgrind's callgrind, for each checkout's build (PROFILE) serving its own noop plugin
# (bench/host-config.sh, as in bench/paired.sh: an API key, a limit rule, fresh instances).
# Instructions do not depend on what else the machine is doing, so two builds compare in one
# run on a noisy machine, where requests per second differ by 10% from one round to the next.
# What they do not count: the kernel's work (sockets, scheduling, page faults) and the cost of
# cache misses. Each checkout needs target/$PROFILE/infergate and
# target/wasm/wasm32-wasip2/release/noop.wasm (see bench/paired.sh).
#
# Knobs: REQUESTS (2000; after 200 not counted), SIM (unset; set: also simulate the caches and
# branch predictors and print L1 instruction and data misses and mispredicted branches per
# request, which is how a build with fewer instructions can still be slower), KEEP (unset; set:
# keep the callgrind files, for `callgrind_annotate`, and say where they are), PROFILE (release;
# `dist` counts the builds `make serve` ships).
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 CHECKOUT..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh needs valgrind" >&2; exit 1; }
REQUESTS=${REQUESTS:-2000}
PROFILE=${PROFILE:-release}
# shellcheck source=bench/host-config.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-config.sh"
W="$(mktemp -d)"
trap 'pkill -f "$W/" 2>/dev/null || true; [[ -n "${KEEP:-}" ]] || rm -rf "$W"' EXIT

# Sequential keep-alive requests from one connection; every answer must be 200.
cat >"$W/drive.py" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", "/noop/ping", headers={"x-api-key": "bench-key-0123456789abcdef"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
EOF

port=18300
for checkout in "$@"; do
    dir="$(cd "$checkout" && pwd)"
    name="$(basename "$dir")-$port"
    port=$((port + 1))
    # A small pool: callgrind cannot map the default one's address space.
    { echo "max_instances = 2"; host_config "$port" "$W" "$name" "$dir"; } >"$W/$name.toml"
    sim=()
    [[ -z "${SIM:-}" ]] || sim=(--cache-sim=yes --branch-sim=yes)
    valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$W/callgrind.$name" \
        "$dir/target/$PROFILE/infergate" serve --config "$W/$name.toml" >"$W/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/readyz" || true)" == 200 ]] && break
        sleep 0.5
    done
    python3 "$W/drive.py" "$port" 200
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$W/drive.py" "$port" "$REQUESTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    # The totals line: Ir, then with SIM: Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim.
    read -r -a t < <(callgrind_annotate "$W/callgrind.$name".1 2>/dev/null |
        awk '/PROGRAM TOTALS/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9,]+$/) {gsub(",", "", $i); printf "%s ", $i}} END {print ""}')
    echo "$checkout: $((t[0] / REQUESTS)) instructions per request (noop, $REQUESTS requests)"
    if [[ -n "${SIM:-}" ]]; then
        echo "  per request: L1i misses $((t[3] / REQUESTS)), L1d misses $((t[4] / REQUESTS)) read + $((t[5] / REQUESTS)) write, mispredicted branches $((t[10] / REQUESTS)) conditional + $((t[12] / REQUESTS)) indirect"
    fi
    [[ -z "${KEEP:-}" ]] || echo "  callgrind file: $W/callgrind.$name.1"
done
