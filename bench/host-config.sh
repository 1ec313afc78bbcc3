# Sourced by bench/paired.sh and bench/instructions.sh: the host config both measure.
#
# host_config PORT DIR NAME CHECKOUT prints the part they share: the listen address, a cache and
# auth database under DIR (named NAME), the API key the load sends, a per-key rate limit that
# never refuses (so the limit check runs on every request), and CHECKOUT's no-op plugin with a
# fresh instance per request. Callers add their own top-level keys before it and tables after.
host_config() {
    cat <<EOT
listen = "127.0.0.1:$1"
cache_dir = "$2/cache-$3"
[auth]
database = "$2/$3.db"
api_keys = [{ id = "bench", key = "bench-key-0123456789abcdef", tenant = "bench" }]
[limits]
store = "memory"
[[limits.rules]]
per = "key"
limit = "100000000/minute"
[[plugins]]
name = "noop"
path = "$4/target/wasm/wasm32-wasip2/release/noop.wasm"
EOT
}
