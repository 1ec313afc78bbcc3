#!/usr/bin/env bash
# bench/run.sh (`make bench`): the benchmark suite. Installs what it needs (wrk, a Python venv
# with the FastAPI peer's packages, wasmtime-cli 48.0.8), builds infergate and the plugins, then
# for each scenario starts infergate and its peer, checks they give the same answers, drives
# each with wrk (a separate process) at the same concurrency — a warm-up, then BENCH_RUNS
# measured runs interleaved between the systems — and reports medians, peak RSS and the ratio
# infergate/peer, plus the model floor (host/nn/examples/floor.rs) and per-request micro figures
# (host/server/examples/bench_micro.rs). Results: bench/results/<UTC time>/results.md (printed).
#
# Scenarios (BENCH_SCENARIOS; a trailing 1, e.g. embed1, runs with one connection):
#   noop    GET /noop/ping: infergate (auth + limits on) vs `wasmtime serve`, the same .wasm
#   digits  POST /digits/classify bench/requests/digits.json: infergate vs FastAPI
#   embed   POST /embed/embeddings bench/requests/embed.json: infergate vs FastAPI, both on
#           ONNX Runtime with the same model file
#   digits-fresh, embed-fresh   the same two plugins with a fresh instance per request (the
#           first-party plugins run on warm instances, as in the embedded default)
#   hello-rs, hello-py, hello-js   POST /NAME/greet bench/requests/hello.json: the greeting of
#           examples/hello in Rust, Python and JavaScript, a fresh instance per request, vs the
#           same handler in FastAPI; NAME-warm: the same plugin with warm instances (reuse = 1000)
#   gen     POST /v1/chat/completions, streamed (SSE), driven by bench/gen.py instead of wrk:
#           infergate's `openai` plugin vs llama-cpp-python's server (bench/requirements-gen.txt),
#           the same GGUF (SmolLM2-135M-Instruct Q4_1) with as many threads as cores. Figures:
#           1-stream decode tokens/s, aggregate tokens/s of 8 concurrent streams, time to first
#           token p50/p99; BENCH_DURATION and BENCH_WARMUP do not apply (a short warm-up run).
#
# infergate is measured as `make serve` builds it: the `dist` profile (release plus link-time
# optimisation) at target/dist/infergate. BENCH_PGO=1 measures bench/pgo.sh's build instead
# (profile-guided optimisation trained on these routes, at target/pgo/infergate).
#
# Knobs: BENCH_DURATION (10s), BENCH_WARMUP (5s), BENCH_RUNS (3), BENCH_CONNECTIONS (16),
# BENCH_SCENARIOS ("noop digits digits-fresh embed embed-fresh embed1 hello-rs hello-rs-warm
# hello-py hello-py-warm hello-js hello-js-warm gen"), BENCH_WRK_THREADS (2), BENCH_SKIP_BUILD
# (unset; 1 skips building infergate and the plugins), BENCH_PGO (0; 1 measures the
# profile-guided build), BENCH_PROFILE (dist; release measures the release build, for
# iterating), BENCH_PEER_PYTHON (the interpreter of the peer's venv; /usr/bin/python3
# where it exists); for gen: BENCH_GEN_SINGLE (5 single-stream requests), BENCH_GEN_STREAMS (8),
# BENCH_GEN_ROUNDS (2 requests per stream), BENCH_GEN_MAX_TOKENS (128).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-5s}"
RUNS="${BENCH_RUNS:-3}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
SCENARIOS="${BENCH_SCENARIOS:-noop digits digits-fresh embed embed-fresh embed1 hello-rs hello-rs-warm hello-py hello-py-warm hello-js hello-js-warm gen}"
WRK_THREADS="${BENCH_WRK_THREADS:-2}"
GEN_SINGLE="${BENCH_GEN_SINGLE:-5}"
GEN_STREAMS="${BENCH_GEN_STREAMS:-8}"
GEN_ROUNDS="${BENCH_GEN_ROUNDS:-2}"
GEN_MAX_TOKENS="${BENCH_GEN_MAX_TOKENS:-128}"
PYTHON="${PYTHON:-python3}"
# The peer's interpreter: the distribution's own where there is one. Debian's python3 served the
# FastAPI peer 8-28% faster than a pyenv build with default flags (bench/RESULTS.md).
DISTRIBUTION_PYTHON="$PYTHON"
[[ -x /usr/bin/python3 ]] && DISTRIBUTION_PYTHON=/usr/bin/python3
PEER_PYTHON="${BENCH_PEER_PYTHON:-$DISTRIBUTION_PYTHON}"
CORES="$(nproc)"

WASMTIME_VERSION=48.0.8
VENV="$ROOT/bench/.venv"
TOOLS="$ROOT/bench/.tools"
WASMTIME="$TOOLS/bin/wasmtime"
PGO="${BENCH_PGO:-0}"
if [[ "$PGO" == 1 ]]; then
    INFERGATE="$ROOT/target/pgo/infergate"
    EXAMPLES="$ROOT/target/pgo/examples"
else
    # The `dist` profile of Cargo.toml (release plus link-time optimisation); BENCH_PROFILE=release
    # measures the quicker release build instead, for iterating (never the reference figures).
    PROFILE="${BENCH_PROFILE:-dist}"
    INFERGATE="$ROOT/target/$PROFILE/infergate"
    EXAMPLES="$ROOT/target/$PROFILE/examples"
fi
WASM_DIR="$ROOT/target/wasm/wasm32-wasip2/release"
NOOP_WASM="$WASM_DIR/noop.wasm"
# The key of bench/infergate.toml; the peer is given the same one.
API_KEY="bench-key-0123456789abcdef"
METRICS_KEY="bench-metrics-0123456789abcdef"  # bench/infergate.toml's [admin] metrics_key
INFERGATE_URL="http://127.0.0.1:18080"
PEER_URL="http://127.0.0.1:18081"
WASMTIME_URL="http://127.0.0.1:18082"
LLAMA_URL="http://127.0.0.1:18083"
# The chat model of bench/infergate.toml (models/fetch.sh), served by both systems in `gen`.
GGUF="$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEN_MODEL="smollm2-135m-instruct"

OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
RAW="$OUT/raw"
mkdir -p "$RAW"

log() { echo "bench: $*" >&2; }

# ---- install ---------------------------------------------------------------------------------

has_scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }

apt_install() {
    log "installing $* (apt)"
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get install -y "$@" >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$@" >/dev/null; }
}

install_tools() {
    command -v wrk >/dev/null || apt_install wrk
    local stamp="$VENV/.requirements.sha256"
    local want
    want="$(sha256sum bench/requirements.txt | cut -d' ' -f1) $(readlink -f "$(command -v "$PEER_PYTHON")")"
    if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "creating $VENV from bench/requirements.txt with $PEER_PYTHON"
        rm -rf "$VENV"
        "$PEER_PYTHON" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
        echo "$want" >"$stamp"
    fi
    if has_scenario gen; then install_gen_peer; fi
    # `wasmtime serve` is the peer of noop only.
    if has_scenario noop && { [[ ! -x "$WASMTIME" ]] || ! "$WASMTIME" --version | grep -q " $WASMTIME_VERSION"; }; then
        log "installing wasmtime-cli $WASMTIME_VERSION into $TOOLS (only what \`serve\` needs)"
        cargo install --locked wasmtime-cli --version "$WASMTIME_VERSION" --root "$TOOLS" \
            --no-default-features --features run,serve,component-model-async,cranelift,pooling-allocator,parallel-compilation
    fi
}

# The peer of `gen`: llama-cpp-python's server, into the same venv (its own stamp: the venv is
# re-created with requirements.txt, and this file's change alone re-installs only it). pip builds
# llama.cpp from source (minutes; pip caches the wheel).
install_gen_peer() {
    local stamp="$VENV/.requirements-gen.sha256" want
    want="$(sha256sum bench/requirements-gen.txt | cut -d' ' -f1)"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    command -v cmake >/dev/null || apt_install cmake
    command -v c++ >/dev/null || apt_install g++
    log "installing bench/requirements-gen.txt into $VENV (builds llama.cpp from source)"
    CMAKE_BUILD_PARALLEL_LEVEL="$CORES" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r bench/requirements.txt -r bench/requirements-gen.txt
    echo "$want" >"$stamp"
}

# ONNX Runtime for infergate: the library of the venv's onnxruntime wheel, the peer's own.
ort_dylib() {
    "$VENV/bin/python" -c 'import onnxruntime, glob, os; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*"))[0])'
}

build() {
    log "building infergate, the plugins and the examples"
    make setup
    # The plugins bench/infergate.toml loads, from this checkout's sources.
    cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml \
        --target-dir target/wasm -p noop -p infergate-digits -p infergate-embed -p hello
    # The greeting in Python and JavaScript, by their SDKs (tests/requirements.txt has
    # componentize-py; the JS SDK's npm packages are pinned by its package-lock.json).
    $PYTHON -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    npm ci --prefix plugins/sdk-js --no-audit --no-fund --loglevel=error
    plugins/sdk-python/build.sh examples/hello-python target/polyglot/hello-py.wasm
    node plugins/sdk-js/build.mjs examples/hello-js/app.js target/polyglot/hello-js.wasm
    if [[ "$PGO" == 1 ]]; then
        bench/pgo.sh
    else
        # Two builds: with the examples, their dev-dependencies (tokio's `test-util`) would
        # change the server's dependencies; alone it is the binary `make serve` builds.
        cargo build --profile "$PROFILE" --workspace --bin infergate
        cargo build --profile "$PROFILE" --workspace --example floor --example bench_micro
    fi
}

# ---- servers ---------------------------------------------------------------------------------

declare -A PID=()

stop() {
    local name="$1"
    if [[ -n "${PID[$name]:-}" ]]; then
        kill "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
        unset "PID[$name]"
    fi
}

stop_all() {
    for name in "${!PID[@]}"; do stop "$name"; done
}
trap stop_all EXIT

# Waits until `curl ARGS...` answers 200 (at most 120 s).
wait_ok() {
    local name="$1"
    shift
    for _ in $(seq 1 1200); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)" == 200 ]]; then return 0; fi
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            log "$name exited; its log:"
            cat "$OUT/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    log "$name was not ready within 120 s"
    exit 1
}

start() {
    local name="$1"
    case "$name" in
    infergate)
        mkdir -p target/bench
        INFERGATE_LOG=warn "$INFERGATE" serve --config "$ROOT/bench/infergate.toml" >"$OUT/$name.log" 2>&1 &
        PID[$name]=$!
        wait_ok "$name" "$INFERGATE_URL/readyz"
        ;;
    fastapi)
        BENCH_API_KEY="$API_KEY" INFERGATE_ROOT="$ROOT" "$VENV/bin/uvicorn" app:app \
            --app-dir bench/peer --host 127.0.0.1 --port 18081 --workers "$CORES" \
            --no-access-log --log-level warning >"$OUT/$name.log" 2>&1 &
        PID[$name]=$!
        wait_ok "$name" "$PEER_URL/openapi.json"
        ;;
    wasmtime-serve)
        "$WASMTIME" serve -Scli --addr 127.0.0.1:18082 "$NOOP_WASM" >"$OUT/$name.log" 2>&1 &
        PID[$name]=$!
        wait_ok "$name" "$WASMTIME_URL/noop/ping"
        ;;
    llama-cpp-python)
        # --interrupt_requests false: by default a new request cuts the one being streamed
        # short; with it off, requests wait for the model in turn (one at a time: the server
        # decodes one sequence per model). It keeps the last request's KV cache and skips the
        # prefill of a prompt it has just seen (gen.py sends the same one every time).
        "$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias "$GEN_MODEL" \
            --n_threads "$CORES" --n_threads_batch "$CORES" --n_ctx 2048 \
            --host 127.0.0.1 --port 18083 --api_key "$API_KEY" --interrupt_requests false \
            >"$OUT/$name.log" 2>&1 &
        PID[$name]=$!
        wait_ok "$name" -H "Authorization: Bearer $API_KEY" "$LLAMA_URL/v1/models"
        ;;
    esac
}

url_of() {
    case "$1" in
    infergate) echo "$INFERGATE_URL" ;;
    fastapi) echo "$PEER_URL" ;;
    wasmtime-serve) echo "$WASMTIME_URL" ;;
    llama-cpp-python) echo "$LLAMA_URL" ;;
    esac
}

# Peak resident memory of a process and its descendants (sum of each one's VmHWM), in KiB.
peak_rss_kb() {
    local pid="$1" total=0 hwm child
    hwm="$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    total=$((total + ${hwm:-0}))
    for child in $(pgrep -P "$pid" || true); do
        total=$((total + $(peak_rss_kb "$child")))
    done
    echo "$total"
}

# ---- load ------------------------------------------------------------------------------------

# wrk against SYSTEM for DURATION; prints the file of its output. Fails on any error or non-2xx.
drive() {
    local scenario="$1" system="$2" run="$3" connections="$4" duration="$5" path="$6" body="$7"
    local threads=$((WRK_THREADS < connections ? WRK_THREADS : connections))
    local file="$RAW/$scenario.$system.$run.txt"
    # infergate's own account of the model's time (report.py reads the difference).
    [[ "$system" == infergate ]] && curl -s -H "Authorization: Bearer $METRICS_KEY" "$INFERGATE_URL/metrics" >"$file.metrics-before"
    BENCH_API_KEY="$API_KEY" BENCH_BODY_FILE="$body" \
        wrk -t "$threads" -c "$connections" -d "$duration" --latency -s bench/wrk.lua \
        "$(url_of "$system")$path" >"$file" 2>&1 || { cat "$file" >&2; exit 1; }
    [[ "$system" == infergate ]] && curl -s -H "Authorization: Bearer $METRICS_KEY" "$INFERGATE_URL/metrics" >"$file.metrics-after"
    if [[ "$run" == warmup ]]; then
        "$PYTHON" bench/report.py record "$scenario" "$system" 0 "$connections" "$file" >/dev/null
    else
        "$PYTHON" bench/report.py record "$scenario" "$system" "$run" "$connections" "$file" >>"$OUT/runs.jsonl"
    fi
}

# bench/gen.py against SYSTEM: a short warm-up (discarded) or measured run RUN, appended to
# $OUT/gen.jsonl. Fails on any failed request.
gen_drive() {
    local system="$1" run="$2" file="$RAW/gen.$system.$2.txt" args
    args=(run "$(url_of "$system")/v1" "$API_KEY" --model "$GEN_MODEL" --system "$system"
        --max-tokens "$GEN_MAX_TOKENS" --streams "$GEN_STREAMS")
    if [[ "$run" == warmup ]]; then
        args+=(--single 1 --rounds 1)
    else
        args+=(--run "$run" --single "$GEN_SINGLE" --rounds "$GEN_ROUNDS" --json "$OUT/gen.jsonl")
    fi
    "$PYTHON" bench/gen.py "${args[@]}" >"$file" 2>&1 || { cat "$file" >&2; exit 1; }
}

# Text generation: like scenario() below, with bench/gen.py for wrk.
gen_scenario() {
    local systems=(infergate llama-cpp-python) system responses=() run
    log "scenario gen ($GEN_STREAMS streams, $GEN_MAX_TOKENS tokens; load: $(cut -d' ' -f1-3 /proc/loadavg))"
    for system in "${systems[@]}"; do
        start "$system"
        local response="$RAW/gen.$system.response"
        "$PYTHON" bench/gen.py probe "$(url_of "$system")/v1" "$API_KEY" "$response" \
            --model "$GEN_MODEL" --max-tokens "$GEN_MAX_TOKENS"
        responses+=("$response")
    done
    "$PYTHON" bench/report.py agree gen "${responses[@]}" | tee -a "$OUT/agree.txt" >&2
    for system in "${systems[@]}"; do
        gen_drive "$system" warmup
    done
    for run in $(seq 1 "$RUNS"); do
        for system in "${systems[@]}"; do
            gen_drive "$system" "$run"
            log "  $system run $run: $(tail -n1 "$OUT/gen.jsonl" | "$PYTHON" bench/report.py show)"
        done
    done
    for system in "${systems[@]}"; do
        echo "{\"scenario\": \"gen\", \"system\": \"$system\", \"peak_rss_kb\": $(peak_rss_kb "${PID[$system]}")}" >>"$OUT/rss.jsonl"
        stop "$system"
    done
}

scenario() {
    local scenario="$1" base="${1%1}" connections="$CONNECTIONS" path body systems
    # A `-fresh` scenario's infergate mount; the peer serves the same route at its plain name.
    local mount="${base%-fresh}"
    if [[ "$scenario" == gen ]]; then gen_scenario; return; fi
    [[ "$scenario" == *1 ]] && connections=1
    case "$base" in
    noop) systems=(infergate wasmtime-serve) path=/noop/ping body="" ;;
    digits | digits-fresh) systems=(infergate fastapi) path=/digits/classify body=bench/requests/digits.json ;;
    embed | embed-fresh) systems=(infergate fastapi) path=/embed/embeddings body=bench/requests/embed.json ;;
    hello-rs | hello-rs-warm | hello-py | hello-py-warm | hello-js | hello-js-warm)
        systems=(infergate fastapi) path="/$base/greet" body=bench/requests/hello.json ;;
    *) log "unknown scenario $scenario"; exit 1 ;;
    esac
    log "scenario $scenario ($connections connections; load: $(cut -d' ' -f1-3 /proc/loadavg))"
    local system responses=() run
    path_of() { if [[ "$1" == infergate ]]; then echo "${path/#\/$mount\//\/$base\/}"; else echo "$path"; fi; }
    for system in "${systems[@]}"; do
        start "$system"
        local response="$RAW/$scenario.$system.response"
        local args=(-s -H "X-API-Key: $API_KEY" -o "$response.body" -w '%{http_code}')
        [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$body")
        { curl "${args[@]}" "$(url_of "$system")$(path_of "$system")"; echo; cat "$response.body"; } >"$response"
        responses+=("$response")
    done
    "$PYTHON" bench/report.py agree "$scenario" "${responses[@]}" | tee -a "$OUT/agree.txt" >&2
    for system in "${systems[@]}"; do
        drive "$scenario" "$system" warmup "$connections" "$WARMUP" "$(path_of "$system")" "$body"
    done
    for run in $(seq 1 "$RUNS"); do
        for system in "${systems[@]}"; do
            drive "$scenario" "$system" "$run" "$connections" "$DURATION" "$(path_of "$system")" "$body"
            log "  $system run $run: $(tail -n1 "$OUT/runs.jsonl" | "$PYTHON" bench/report.py show)"
        done
    done
    for system in "${systems[@]}"; do
        echo "{\"scenario\": \"$scenario\", \"system\": \"$system\", \"peak_rss_kb\": $(peak_rss_kb "${PID[$system]}")}" >>"$OUT/rss.jsonl"
        stop "$system"
    done
}

# ---- main ------------------------------------------------------------------------------------

install_tools
export ORT_DYLIB_PATH="$(ort_dylib)"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then build; fi
# Hard links to the binaries, so that a build running meanwhile (another checkout may share
# target/) cannot swap them in the middle of the run.
mkdir -p "$OUT/bin"
for f in "$INFERGATE" "$EXAMPLES/floor" "$EXAMPLES/bench_micro"; do
    [[ -e "$f" ]] || { log "$f is missing: run without BENCH_SKIP_BUILD"; exit 1; }
    ln -f "$f" "$OUT/bin/"
done
# bench/infergate.toml loads the chat model in every scenario (`make setup` fetches it).
[[ -e "$GGUF" ]] || models/fetch.sh
for f in "$NOOP_WASM" "$WASM_DIR/digits.wasm" "$WASM_DIR/embed.wasm" "$WASM_DIR/hello.wasm" \
    target/polyglot/hello-py.wasm target/polyglot/hello-js.wasm; do
    [[ -e "$f" ]] || { log "$f is missing: run without BENCH_SKIP_BUILD"; exit 1; }
done
INFERGATE="$OUT/bin/infergate"
EXAMPLES="$OUT/bin"

MACHINE="$(lscpu | sed -n 's/^Model name: *//p'), $CORES cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, \
Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2), Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), \
$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $("$WASMTIME" --version 2>/dev/null || echo "no wasmtime-cli"), \
onnxruntime $("$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
if has_scenario gen; then
    MACHINE="$MACHINE, llama-cpp-python $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi
COMMAND="BENCH_RUNS=$RUNS BENCH_DURATION=$DURATION BENCH_CONNECTIONS=$CONNECTIONS BENCH_SCENARIOS='$SCENARIOS' BENCH_PGO=$PGO BENCH_PROFILE=${PROFILE:-dist} make bench"
if has_scenario gen; then
    COMMAND="BENCH_GEN_SINGLE=$GEN_SINGLE BENCH_GEN_STREAMS=$GEN_STREAMS BENCH_GEN_ROUNDS=$GEN_ROUNDS BENCH_GEN_MAX_TOKENS=$GEN_MAX_TOKENS $COMMAND"
fi
MACHINE="$MACHINE" COMMAND="$COMMAND" "$PYTHON" - "$OUT/meta.json" <<PY
import json, os, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "command": os.environ["COMMAND"],
    "runs": $RUNS, "duration": "$DURATION", "warmup": "$WARMUP", "wrk_threads": $WRK_THREADS,
    "machine": os.environ["MACHINE"], "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)",
}, open(sys.argv[1], "w"), indent=1)
PY

log "model floor (host/nn/examples/floor.rs)"
"$EXAMPLES/floor" | tee "$OUT/floor.txt" >&2
log "micro figures (host/server/examples/bench_micro.rs)"
"$EXAMPLES/bench_micro" "$NOOP_WASM" | tee "$OUT/micro.txt" >&2

for s in $SCENARIOS; do scenario "$s"; done

"$PYTHON" - "$OUT/meta.json" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
rm -rf "$OUT/bin"
"$PYTHON" bench/report.py table "$OUT"
log "results: $OUT/results.md"
