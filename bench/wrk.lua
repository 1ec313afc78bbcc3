-- The wrk script of bench/run.sh: every request carries the API key (X-API-Key) and, for POST
-- scenarios, the JSON body of $BENCH_BODY_FILE. At the end it prints one line,
-- `RESULT {json}`, with exact figures (latencies in µs) and every error count, which
-- bench/report.py reads. No per-response hook: that would slow wrk down.
local body_file = os.getenv("BENCH_BODY_FILE") or ""
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
wrk.headers["X-API-Key"] = assert(os.getenv("BENCH_API_KEY"), "BENCH_API_KEY is not set")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "mean_us": %.1f, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
