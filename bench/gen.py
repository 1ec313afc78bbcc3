#!/usr/bin/env python3
"""The load generator of bench/run.sh's `gen` scenario: streamed chat completions from an
OpenAI-compatible server (infergate's `openai` plugin, llama-cpp-python's server). Standard
library only.

  gen.py probe BASE_URL KEY OUT     one streamed completion; OUT: the status code on the first
                                    line, then {"text", "completion_tokens", ...} (report.py agree)
  gen.py run BASE_URL KEY [options] the measurement (below); prints the figures, and with
                                    --json FILE appends one JSON record to FILE (report.py table)

BASE_URL is the API root, e.g. http://127.0.0.1:18080/v1; requests go to BASE_URL/chat/completions
with `Authorization: Bearer KEY`, `stream: true`, greedy decoding (`temperature: 0`), at most
--max-tokens tokens, the fixed PROMPT below, and `stream_options: {"include_usage": true}`.

A `run` measures:
  1. single stream: --single requests one after another. Decode tokens/s of a request is
     (tokens - 1) / (time of its last content chunk - time of its first): the rate after the first
     token, so prefill and the first token's latency do not count (a server that stops before
     --max-tokens is still measured over what it generated). The figure is the median.
  2. --streams concurrent streams: one thread each, each sending --rounds requests one after
     another, all started together. Aggregate tokens/s: every completion token of every stream,
     divided by the wall time from the first request sent to the last stream ended.
  3. time to first token (TTFT): request sent -> first chunk with content, p50 and p99 over the
     concurrent streams' requests (and the single-stream median separately).
Tokens are the final chunk's `usage.completion_tokens` where the server sends it (include_usage),
else the number of chunks with content (llama-cpp-python 0.3.x ignores stream_options and sends
one chunk per token). Both counts are recorded. Any failed request (status, error chunk, no
content, no [DONE]) fails the run.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

MODEL = "smollm2-135m-instruct"
# 18 tokens in SmolLM2's tokenizer; 48 as llama-cpp-python sends it, through the GGUF's chat
# template, which adds SmolLM's default system message when there is none. It asks for more text
# than 128 tokens: greedy decoding runs to max_tokens (finish_reason "length"). Every request
# sends the same prompt, so a server that keeps the previous request's KV cache and reuses the
# common prefix (llama-cpp-python does: "prompt eval ... 1 tokens" in its log) skips the prefill.
PROMPT = "Write a long story about a robot who learns to paint, describing every colour it uses."


class Failed(Exception):
    pass


def request_body(args):
    return json.dumps({
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


def stream_once(base, key, body, timeout):
    """One streamed chat completion. Times are seconds from just before the request is sent."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    path = url.path.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise Failed(f"status {resp.status}: {resp.read()[:500].decode(errors='replace')}")
        first = last = None
        chunks = 0
        text = []
        usage = None
        finish = None
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, `event:` lines, `: ping` comments
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise Failed(f"error chunk: {json.dumps(chunk)[:500]}")
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter() - t0
                    if first is None:
                        first = now
                    last = now
                    chunks += 1
                    text.append(content)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        end = time.perf_counter() - t0
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise Failed(f"{type(e).__name__}: {e}") from e
    finally:
        conn.close()
    if not done:
        raise Failed("the stream ended without data: [DONE]")
    if first is None:
        raise Failed(f"no content (finish_reason {finish})")
    tokens = usage if usage is not None else chunks
    return {
        "ttft": first, "last": last, "end": end, "tokens": tokens, "chunks": chunks,
        "usage": usage, "finish": finish, "text": "".join(text),
        "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else None,
    }


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def single(args, body):
    results = [stream_once(args.base, args.key, body, args.timeout) for _ in range(args.single)]
    rates = [r["decode_tok_s"] for r in results if r["decode_tok_s"]]
    if not rates:
        raise Failed("single stream: no request produced two tokens or more")
    return results, {
        "requests": len(results),
        "tok_s": statistics.median(rates),
        "tok_s_each": [round(x, 2) for x in rates],
        "e2e_tok_s": statistics.median(r["tokens"] / r["end"] for r in results),
        "ttft_ms_p50": statistics.median(r["ttft"] for r in results) * 1000,
        "tokens": [r["tokens"] for r in results],
    }


def concurrent(args, body):
    results, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(args.streams + 1)
    start = {}

    def worker():
        barrier.wait()
        for _ in range(args.rounds):
            sent = time.perf_counter()
            try:
                r = stream_once(args.base, args.key, body, args.timeout)
            except Failed as e:
                with lock:
                    errors.append(str(e))
                return
            r["sent"] = sent
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.streams)]
    for t in threads:
        t.start()
    start["t"] = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start["t"]
    if errors:
        raise Failed(f"{len(errors)} of the concurrent requests failed, first: {errors[0]}")
    ttfts = [r["ttft"] for r in results]
    total = sum(r["tokens"] for r in results)
    rates = [r["decode_tok_s"] for r in results if r["decode_tok_s"]]
    return results, {
        "streams": args.streams,
        "requests": len(results),
        "agg_tok_s": total / wall,
        "wall_s": wall,
        "tokens": total,
        "ttft_ms_p50": percentile(ttfts, 0.5) * 1000,
        "ttft_ms_p99": percentile(ttfts, 0.99) * 1000,
        "ttft_ms_max": max(ttfts) * 1000,
        "stream_tok_s_p50": statistics.median(rates) if rates else None,
    }


def summary(r):
    """One line of a record (report.py show prints the same)."""
    s, c = r["single"], r["concurrent"]
    return (f"1 stream {s['tok_s']:.1f} tok/s (TTFT {s['ttft_ms_p50']:.0f} ms); "
            f"{c['streams']} streams {c['agg_tok_s']:.1f} tok/s aggregate, "
            f"TTFT p50 {c['ttft_ms_p50']:.0f} ms p99 {c['ttft_ms_p99']:.0f} ms; tokens from {r['count']}")


def run(args):
    body = request_body(args)
    s_results, s = single(args, body)
    c_results, c = concurrent(args, body)
    every = s_results + c_results
    finishes = {}
    for x in every:
        finishes[x["finish"]] = finishes.get(x["finish"], 0) + 1
    record = {
        "scenario": "gen", "system": args.system, "run": args.run,
        "max_tokens": args.max_tokens, "rounds": args.rounds,
        "single": s, "concurrent": c,
        "count": "usage" if all(x["usage"] is not None for x in every) else "chunks",
        "chunks_equal_usage": all(x["usage"] is None or x["usage"] == x["chunks"] for x in every),
        "finish_reasons": finishes,
    }
    print(f"gen {args.system} run {args.run}: {summary(record)}", file=sys.stderr)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
    else:
        print(json.dumps(record, indent=1))


def probe(args):
    try:
        r = stream_once(args.base, args.key, request_body(args), args.timeout)
    except Failed as e:
        with open(args.out, "w") as f:
            f.write(f"0\n{e}\n")
        return
    with open(args.out, "w") as f:
        f.write("200\n")
        json.dump({"text": r["text"], "completion_tokens": r["tokens"], "chunks": r["chunks"],
                   "usage_reported": r["usage"] is not None, "finish_reason": r["finish"]}, f)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "probe"])
    p.add_argument("base", help="API root, e.g. http://127.0.0.1:18080/v1")
    p.add_argument("key")
    p.add_argument("out", nargs="?", help="probe: the response file")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--single", type=int, default=5, help="single-stream requests (default 5)")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="requests per concurrent stream (default 2)")
    p.add_argument("--timeout", type=float, default=600, help="socket timeout, seconds")
    p.add_argument("--system", default="?", help="the record's system name")
    p.add_argument("--run", type=int, default=0, help="the record's run number")
    p.add_argument("--json", help="append the record to this file")
    args = p.parse_args()
    if args.command == "probe" and not args.out:
        p.error("probe needs OUT")
    try:
        (run if args.command == "run" else probe)(args)
    except Failed as e:
        print(f"gen.py: {args.system}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
