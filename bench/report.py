#!/usr/bin/env python3
"""The bookkeeping of bench/run.sh: turns wrk output into records, checks that two systems give
the same answers, and writes the results table. Standard library only.

  report.py record SCENARIO SYSTEM RUN CONNECTIONS WRK_OUTPUT   one JSON line (fails on any error)
  report.py agree SCENARIO RESPONSE_FILE...                      same answers from every system?
  report.py table OUT_DIR                                        writes OUT_DIR/results.md, prints it
  report.py show < RECORD                                        one record in one line

The `gen` scenario (text generation) is measured by bench/gen.py, not wrk: its records are in
OUT_DIR/gen.jsonl and its answers are gen.py's probe files.
"""
import json
import math
import re
import statistics
import sys
from pathlib import Path

# The infergate system and its peer in each scenario (a trailing "1": one connection).
PEERS = {"noop": "wasmtime-serve", "digits": "fastapi", "embed": "fastapi", "gen": "llama-cpp-python"}
# The greeting in each plugin language, with a fresh instance per request or warm ones (`reuse`),
# against the same handler in FastAPI.
HELLOS = ["hello-rs", "hello-py", "hello-js"]
for _h in HELLOS:
    PEERS[_h] = PEERS[f"{_h}-warm"] = "fastapi"
# The first-party plugins with a fresh instance per request, against the same peer.
PEERS["digits-fresh"] = PEERS["embed-fresh"] = "fastapi"
# The targets: (minimum throughput ratio infergate/peer, p99 must be lower), met only when every
# run's ratio (run i of infergate against run i of its peer, measured one after the other)
# reaches the minimum, not only the median's.
TARGETS = {"noop": (3.0, False), "digits": (5.0, True), "embed": (1.4, False),
           "hello-py-warm": (1.0, False)}
# The sentence of bench/requests/embed.json is 19 tokens ([CLS] ... [SEP]); floor.rs uses them.
EMBED_TOKENS = 19
# gen: (figure, label, target as (kind, value)): "min" ratio infergate/peer at least value,
# "max" at most value (lower is better), None: no target.
GEN_FIGURES = [
    (("single", "tok_s"), "1-stream decode tokens/s", ("min", 0.95)),
    (("concurrent", "agg_tok_s"), "{streams}-stream aggregate tokens/s", ("min", 2.0)),
    (("concurrent", "ttft_ms_p50"), "TTFT p50 ms ({streams} streams)", None),
    (("concurrent", "ttft_ms_p99"), "TTFT p99 ms ({streams} streams)", ("max", 1.0)),
    (("single", "ttft_ms_p50"), "TTFT ms, 1 stream (median)", None),
]


def run_ratios(ours, theirs):
    """Throughput ratio of each measured run: run i of infergate against run i of the peer."""
    theirs = {r["run"]: r["rps"] for r in theirs}
    return [r["rps"] / theirs[r["run"]] for r in sorted(ours, key=lambda r: r["run"]) if r["run"] in theirs]


def fail(message):
    print(f"report.py: {message}", file=sys.stderr)
    sys.exit(1)


def record(scenario, system, run, connections, path):
    text = Path(path).read_text()
    match = re.search(r"^RESULT (\{.*\})$", text, re.M)
    if not match:
        fail(f"no RESULT line in {path}:\n{text}")
    r = json.loads(match.group(1))
    errors = {k: v for k, v in r.items() if k.endswith("errors") or k == "timeouts"}
    if any(errors.values()) or r["requests"] == 0:
        fail(f"{scenario}/{system} run {run}: not every request succeeded: {errors}, "
             f"{r['requests']} requests (see {path})")
    r.update(scenario=scenario, system=system, run=int(run), connections=int(connections),
             rps=r["requests"] / (r["duration_us"] / 1e6))
    model_us = model_time(Path(path + ".metrics-before"), Path(path + ".metrics-after"))
    if model_us is not None:
        r["model_us"] = model_us
    print(json.dumps(r))


def model_time(before, after):
    """Median time of one backend call of the model infergate ran during a run, in µs, from its
    /metrics: the model whose completed count grew between before and after, and the median of
    its latest computes (`infergate_model_compute_seconds`, quantile 0.5) at the end of the run;
    None without them."""
    if not (before.exists() and after.exists()):
        return None

    def counters(path):
        out = {}
        for line in path.read_text().splitlines():
            m = re.match(r'infergate_model_(busy_seconds|completed)_total\{model="([^"]+)"\} (\S+)', line)
            if m:
                out[(m.group(2), m.group(1))] = float(m.group(3))
        return out

    b, a = counters(before), counters(after)
    for (model, kind), value in a.items():
        done = value - b.get((model, kind), 0) if kind == "completed" else 0
        if done > 0:
            median = re.search(
                r'^infergate_model_compute_seconds\{model="%s",quantile="0\.5"\} (\S+)$' % re.escape(model),
                after.read_text(), re.M)
            return float(median.group(1)) * 1e6 if median else None
    return None


def show():
    r = json.loads(sys.stdin.readline())
    if r.get("scenario") == "gen":
        s, c = r["single"], r["concurrent"]
        print(f"1 stream {s['tok_s']:.1f} tok/s, {c['streams']} streams {c['agg_tok_s']:.1f} tok/s, "
              f"TTFT p50 {c['ttft_ms_p50']:.0f} ms p99 {c['ttft_ms_p99']:.0f} ms")
        return
    print(f"{r['rps']:,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms")


def read_response(path):
    """A response file: the status code on the first line, the body after it."""
    status, _, body = Path(path).read_text().partition("\n")
    return int(status), body


def agree(scenario, *paths):
    base = scenario.rstrip("1").removesuffix("-fresh")
    answers = {}
    for path in paths:
        status, body = read_response(path)
        if status != 200:
            fail(f"{path}: status {status}, body {body[:300]}")
        answers[path] = body
    if base == "gen":
        agree_gen(scenario, answers)
        return
    if base == "noop":
        for path, body in answers.items():
            if body != "ok\n":
                fail(f"{path}: expected 'ok', got {body[:100]!r}")
        print(f"agree {scenario}: every system answers 200 ok")
        return
    parsed = {p: json.loads(b) for p, b in answers.items()}
    (first, a), *others = parsed.items()
    if base in PEERS and base.startswith("hello"):
        for path, b in others:
            if a != b:
                fail(f"{base} disagrees: {first} says {a}, {path} says {b}")
        print(f"agree {scenario}: every system says {a['message']!r}")
        return
    if base == "digits":
        for path, b in others:
            if a["digit"] != b["digit"]:
                fail(f"digits disagree: {first} says {a['digit']}, {path} says {b['digit']}")
            diff = max(abs(x - y) for x, y in zip(a["scores"], b["scores"], strict=True))
            if diff > 1e-4:
                fail(f"digit scores differ by up to {diff} between {first} and {path}")
        print(f"agree {scenario}: every system says {a['digit']} (scores within 1e-4)")
    elif base == "embed":
        for path, b in parsed.items():
            if b["usage"]["prompt_tokens"] != EMBED_TOKENS:
                fail(f"{path}: {b['usage']['prompt_tokens']} tokens, expected {EMBED_TOKENS}")
        u = a["data"][0]["embedding"]
        for path, b in others:
            v = b["data"][0]["embedding"]
            cos = sum(x * y for x, y in zip(u, v, strict=True)) / math.sqrt(
                sum(x * x for x in u) * sum(y * y for y in v))
            if cos <= 0.99:
                fail(f"embeddings of {first} and {path} differ: cosine {cos:.6f}")
            print(f"agree {scenario}: cosine {cos:.6f}, {EMBED_TOKENS} tokens on every system")
    else:
        fail(f"unknown scenario {scenario}")


def agree_gen(scenario, answers):
    """Greedy decoding of the same prompt on the same GGUF: both systems must generate text; how
    far their texts agree is printed, not enforced (batched decoding may round differently)."""
    parsed = {p: json.loads(b) for p, b in answers.items()}
    for path, b in parsed.items():
        if not b["text"].strip() or b["completion_tokens"] < 1:
            fail(f"{path}: no text generated: {b}")
    (first, a), *others = parsed.items()
    for path, b in others:
        common = 0
        for x, y in zip(a["text"], b["text"]):
            if x != y:
                break
            common += 1
        print(f"agree {scenario}: {first} and {path}: the first {common} of "
              f"{len(a['text'])}/{len(b['text'])} characters equal; tokens "
              f"{a['completion_tokens']}/{b['completion_tokens']}, finish "
              f"{a['finish_reason']}/{b['finish_reason']}, usage reported "
              f"{a['usage_reported']}/{b['usage_reported']}")
    print(f"agree {scenario}: {first} says {a['text'][:120]!r}...")


def gen_table(out, rss, md):
    """The `gen` scenario's section of results.md, from OUT_DIR/gen.jsonl."""
    path = out / "gen.jsonl"
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    by_system = {}
    for r in records:
        by_system.setdefault(r["system"], []).append(r)
    med = {system: {key: statistics.median(r[key[0]][key[1]] for r in rs) for key, _, _ in GEN_FIGURES}
           for system, rs in by_system.items()}
    first = records[0]
    md.append(f"\n**Text generation** (`gen`, bench/gen.py): SmolLM2-135M-Instruct Q4_1 GGUF, "
              f"greedy, at most {first['max_tokens']} tokens per request; 1 stream: "
              f"{first['single']['requests']} requests one after another (decode rate after the "
              f"first token, median); {first['concurrent']['streams']} concurrent streams of "
              f"{first['rounds']} requests each (all tokens / wall time). Medians over "
              f"{len(by_system.get('infergate', records))} runs.\n")
    md.append("| system | 1-stream tok/s | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | "
              "1-stream TTFT ms | peak RSS MiB | tokens counted from | finish reasons |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for system, rs in by_system.items():
        m = med[system]
        mem = rss.get(("gen", system))
        finishes = {}
        for r in rs:
            for k, v in r["finish_reasons"].items():
                finishes[k] = finishes.get(k, 0) + v
        md.append(f"| {system} | {m[('single', 'tok_s')]:.1f} | {m[('concurrent', 'agg_tok_s')]:.1f} | "
                  f"{m[('concurrent', 'ttft_ms_p50')]:.0f} | {m[('concurrent', 'ttft_ms_p99')]:.0f} | "
                  f"{m[('single', 'ttft_ms_p50')]:.0f} | {'' if mem is None else f'{mem:.0f}'} | "
                  f"{rs[0]['count']} | {', '.join(f'{k} {v}' for k, v in finishes.items())} |")
    peer = PEERS["gen"]
    a, b = med.get("infergate"), med.get(peer)
    if not (a and b):
        return
    md.append(f"\n**infergate / {peer}**, text generation\n")
    md.append("| figure | infergate | peer | ratio | target | met |")
    md.append("|---|---:|---:|---:|---|---|")
    for key, label, target in GEN_FIGURES:
        ratio = a[key] / b[key]
        text, met = "", ""
        if target:
            kind, value = target
            text = f"≥{value}x" if kind == "min" else ("no worse (≤1x)" if value == 1 else f"≤{value}x")
            ok = ratio >= value if kind == "min" else ratio <= value
            met = "yes" if ok else "**no**"
        label = label.format(streams=first["concurrent"]["streams"])
        md.append(f"| {label} | {num(a[key])} | {num(b[key])} | {ratio:.2f}x | {text} | {met} |")
    ra, rb = rss.get(("gen", "infergate")), rss.get(("gen", peer))
    if ra and rb:
        md.append(f"| peak RSS MiB | {ra:.0f} | {rb:.0f} | {ra / rb:.2f}x | | |")


def lines_of(path, tag):
    """`tag NAME... numbers` lines of a floor/micro output, comments stripped."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split("#")[0].split()
            if fields and fields[0] == tag:
                out.append(fields[1:])
    return out


def num(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def table(out_dir):
    out = Path(out_dir)
    meta = json.loads((out / "meta.json").read_text())
    runs_file = out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines() if line] if runs_file.exists() else []
    rss = {}
    if (out / "rss.jsonl").exists():
        for line in (out / "rss.jsonl").read_text().splitlines():
            r = json.loads(line)
            rss[(r["scenario"], r["system"])] = r["peak_rss_kb"] / 1024

    # Median over the runs of each figure, per scenario and system.
    results = {}
    for r in runs:
        results.setdefault((r["scenario"], r["system"]), []).append(r)
    med = {}
    for key, rs in results.items():
        med[key] = {f: statistics.median(r[f] for r in rs) for f in ("rps", "p50_us", "p99_us")}
        if all("model_us" in r for r in rs):
            med[key]["model_us"] = statistics.median(r["model_us"] for r in rs)
        med[key]["n"] = len(rs)
        med[key]["connections"] = rs[0]["connections"]
        med[key]["spread"] = (max(r["rps"] for r in rs) - min(r["rps"] for r in rs)) / med[key]["rps"]

    md = []
    md.append(f"## Run of {meta['date']}\n")
    md.append(f"Command: `{meta['command']}`  ")
    md.append(f"Settings: {meta['runs']} measured runs of {meta['duration']} per system and "
              f"scenario after a {meta['warmup']} warm-up, runs interleaved between the systems; "
              f"wrk {meta['wrk_threads']} threads; medians over the runs.  ")
    md.append(f"Machine: {meta['machine']}  ")
    md.append(f"Load average before / after: {meta['load_before']} / {meta.get('load_after', '?')}\n")

    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    if scenarios:  # wrk scenarios (gen has its own section below)
        md.append("| scenario | connections | system | requests/s | p50 ms | p99 ms | peak RSS MiB | spread of req/s |")
        md.append("|---|---:|---|---:|---:|---:|---:|---:|")
        for s in scenarios:
            for system in ("infergate", PEERS[s.rstrip("1")]):
                m = med.get((s, system))
                if not m:
                    continue
                mem = rss.get((s, system))
                md.append(f"| {s} | {m['connections']} | {system} | {num(m['rps'])} | "
                          f"{m['p50_us'] / 1000:.3f} | {m['p99_us'] / 1000:.3f} | "
                          f"{'' if mem is None else f'{mem:.0f}'} | {m['spread'] * 100:.1f}% |")

        md.append("\n**infergate / peer** (throughput: higher is better; latency and memory: lower is better)\n")
        md.append("| scenario | peer | throughput | each run | p50 | p99 | peak RSS | target | met |")
        md.append("|---|---|---:|---|---:|---:|---:|---|---|")
        for s in scenarios:
            base = s.rstrip("1")
            peer = PEERS[base]
            a, b = med.get((s, "infergate")), med.get((s, peer))
            if not (a and b):
                continue
            thr = a["rps"] / b["rps"]
            per_run = run_ratios(results.get((s, "infergate"), []), results.get((s, peer), []))
            p50, p99 = a["p50_us"] / b["p50_us"], a["p99_us"] / b["p99_us"]
            ra, rb = rss.get((s, "infergate")), rss.get((s, peer))
            mem = f"{ra / rb:.2f}x" if ra and rb else ""
            target, met = "", ""
            if base in TARGETS and not s.endswith("1"):
                minimum, lower_p99 = TARGETS[base]
                target = f"≥{minimum}x" + (", lower p99" if lower_p99 else "")
                ok = min([thr, *per_run]) >= minimum and (p99 < 1 or not lower_p99)
                met = "yes" if ok else "**no**"
            each = ", ".join(f"{r:.2f}x" for r in per_run)
            md.append(f"| {s} | {peer} | {thr:.2f}x | {each} | {p50:.2f}x | {p99:.2f}x | {mem} | {target} | {met} |")

        warm = [(h, med.get((h, "infergate")), med.get((f"{h}-warm", "infergate"))) for h in HELLOS]
        warm = [(h, a, b) for h, a, b in warm if a and b]
        if warm:
            md.append("\n**Warm instances** (`reuse = 1000`) against a fresh instance per request, "
                      "infergate alone (target for Python: ≥5x throughput)\n")
            md.append("| plugin | fresh req/s | warm req/s | throughput | p99 fresh ms | p99 warm ms |")
            md.append("|---|---:|---:|---:|---:|---:|")
            for h, a, b in warm:
                md.append(f"| {h} | {num(a['rps'])} | {num(b['rps'])} | {b['rps'] / a['rps']:.2f}x | "
                          f"{a['p99_us'] / 1000:.3f} | {b['p99_us'] / 1000:.3f} |")

    gen_table(out, rss, md)

    floor = {(f[0], f[1]): (float(f[2]), float(f[3]), float(f[4])) for f in lines_of(out / "floor.txt", "floor")}
    if floor:
        md.append("\n**Physical floor**: the backend alone, called from Rust on the same inputs "
                  "(`host/nn/examples/floor.rs`, 1 intra-op thread, one inference at a time)\n")
        md.append("| backend | model | median µs | p99 µs | with infergate's scheduler, median µs |")
        md.append("|---|---|---:|---:|---:|")
        for (backend, model), (m, p, sched) in floor.items():
            md.append(f"| {backend} | {model} | {m:.1f} | {p:.1f} | {sched:.1f} |")
        md.append("\n**Time outside the model** at p50: the request's p50 minus the model's time, "
                  "taken two ways: the floor above (ONNX Runtime median, measured alone, before the "
                  "runs) and, for infergate, its own account of the model's time during the runs "
                  "(`infergate_model_compute_seconds{quantile=\"0.5\"}` from `/metrics` at the end of "
                  "each run: the median of its latest 1,024 backend calls, a call under load being "
                  "a batch). "
                  "With one connection nothing queues or batches; with 16 a request's p50 is "
                  "mostly waiting.\n")
        md.append("| scenario | connections | system | p50 µs | model µs (floor) | outside share | "
                  "model µs (in infergate) | outside share |")
        md.append("|---|---:|---|---:|---:|---:|---:|---:|")
        for s in scenarios:
            base = s.rstrip("1")
            if ("onnxruntime", base) not in floor:
                continue
            floor_us = floor[("onnxruntime", base)][0]
            for system in ("infergate", PEERS[base]):
                m = med.get((s, system))
                if not m:
                    continue
                p50 = m["p50_us"]
                inside = m.get("model_us")
                own = f"{inside:.0f} | {(p50 - inside) / p50 * 100:.1f}%" if inside else "– | –"
                md.append(f"| {s} | {m['connections']} | {system} | {p50:.0f} | {floor_us:.0f} | "
                          f"{(p50 - floor_us) / p50 * 100:.1f}% | {own} |")

    micro = lines_of(out / "micro.txt", "micro")
    if micro:
        md.append("\n**Per-request micro figures**, in-process (`host/server/examples/bench_micro.rs`)\n")
        md.append("| what | median µs | p99 µs |")
        md.append("|---|---:|---:|")
        labels = {
            "noop_call": "instantiate + call the no-op plugin, one at a time",
            "noop_call_warm": "the same on a warm instance (`reuse`)",
            "noop_call_16": "the same from 16 concurrent tasks (wall time per call)",
            "host_path": "host overhead: the whole request path in process, no-op plugin, fresh instance",
            "host_path_warm": "host overhead, warm instance (`reuse`)",
            "digits_path_warm": "POST /digits/classify in process, warm instance, model included",
            "auth": "auth: API key from the config",
            "limit": "limit check: one per-key rate, in memory",
        }
        for f in micro:
            md.append(f"| {labels.get(f[0], f[0])} | {f[1]} | {f[2]} |")

    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    commands = {"record": record, "agree": agree, "table": table, "show": show}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        fail(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
