#!/usr/bin/env python3
"""Load benchmark of `slimlm serve`: streaming greedy completions from 1, 4, 8, 16 concurrent clients.

Starts the server (`--bin serve --model DIR --port 0`), then for each concurrency c runs c client
threads, each doing `--requests` streaming completions of `--tokens` tokens on a fixed prompt, and
records the time to first token and every inter-token gap (arrival of SSE chunks). Reports, per c:
aggregate decode tokens/s (tokens generated in the phase / wall time of the phase), TTFT and
per-token latency p50/p99, and the throughput ratio vs c=1; then the server's peak RSS (VmHWM, and
the peaks of RssAnon/RssFile sampled during the run) and the peak `slimlm_kv_cache_bytes` seen on
/metrics during the largest phase. Markdown on stdout, JSON in target/bench-results/serve.json.

Standard library only (Python 3.9+). The whole run is bounded by --timeout seconds.
"""

import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LISTEN_RE = re.compile(r"^slimlm serve: listening on http://(\S+):(\d+)\s*$")

# About 32 GPT-2 tokens of plain English.
PROMPT = ("The package manager downloads the lists of available packages from the configured mirrors, "
          "checks their signatures, resolves the dependencies and then installs the new versions.")


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = float(parts[1])
        except ValueError:
            pass
    return out


def proc_status(pid):
    """VmHWM, VmRSS, RssAnon, RssFile of a process, in bytes ({} when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


class Server:
    def __init__(self, args, deadline):
        cmd = [args.bin, "serve", "--model", args.model, "--port", "0"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += args.server_arg
        self.cmd = cmd
        self.lines = []
        self.host = self.port = None
        ready = threading.Event()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace")

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = LISTEN_RE.match(line)
                if m and not ready.is_set():
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        limit = min(deadline, time.monotonic() + 120)
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > limit:
                self.kill()
                raise SystemExit(f"load.py: `{' '.join(cmd)}` did not start:\n{''.join(self.lines[-50:])}")

    def conn(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=max(timeout, 1.0))

    def get(self, path, timeout=10):
        c = self.conn(timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def metrics(self):
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def stream_once(server, tokens, deadline):
    """One streaming greedy completion: {'ttft', 'gaps', 'chunks', 'finish'} or {'error'}."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True})
    c = server.conn(deadline - time.monotonic())
    t0 = time.perf_counter()
    try:
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        arrivals, finish = [], None
        while True:
            if time.monotonic() > deadline:
                return {"error": "timeout"}
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            choice = json.loads(data)["choices"][0]
            if choice.get("text"):
                arrivals.append(now)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        if not arrivals:
            return {"error": "no text chunk"}
        return {
            "ttft": arrivals[0] - t0,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "chunks": len(arrivals),
            "finish": finish,
        }
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        c.close()


def run_phase(server, c, requests, tokens, deadline):
    results = [[] for _ in range(c)]
    barrier = threading.Barrier(c + 1)
    stop_sampling = threading.Event()
    samples = {"kv_cache_bytes": 0.0, "active_sequences": 0.0, "queue_depth": 0.0,
               "RssAnon": 0, "RssFile": 0, "VmRSS": 0}

    def client(i):
        barrier.wait()
        for _ in range(requests):
            if time.monotonic() > deadline:
                results[i].append({"error": "timeout"})
                return
            results[i].append(stream_once(server, tokens, deadline))

    def sampler():
        while not stop_sampling.is_set():
            try:
                m = server.metrics()
                for k in ("kv_cache_bytes", "active_sequences", "queue_depth"):
                    samples[k] = max(samples[k], m.get("slimlm_" + k, 0.0))
            except (OSError, RuntimeError, http.client.HTTPException):
                pass
            st = proc_status(server.proc.pid)
            for k in ("RssAnon", "RssFile", "VmRSS"):
                samples[k] = max(samples[k], st.get(k, 0))
            stop_sampling.wait(0.1)

    before = server.metrics()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(c)]
    for t in threads:
        t.start()
    smp = threading.Thread(target=sampler, daemon=True)
    smp.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))
    wall = time.perf_counter() - t0
    stop_sampling.set()
    smp.join(5)
    after = server.metrics()

    flat = [r for rs in results for r in rs]
    ok = [r for r in flat if "error" not in r]
    errors = [r["error"] for r in flat if "error" in r]
    generated = after.get("slimlm_generated_tokens_total", 0) - before.get("slimlm_generated_tokens_total", 0)
    chunks = sum(r["chunks"] for r in ok)
    total_tokens = generated if generated > 0 else chunks
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    steps = after.get("slimlm_batch_size_count", 0) - before.get("slimlm_batch_size_count", 0)
    seqs = after.get("slimlm_batch_size_sum", 0) - before.get("slimlm_batch_size_sum", 0)
    return {
        "streams": c,
        "requests": len(flat),
        "completed": len(ok),
        "errors": errors[:10],
        "error_count": len(errors),
        "tokens": int(total_tokens),
        "chunks": chunks,
        "wall_s": wall,
        "tokens_per_s": total_tokens / wall if wall > 0 else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "token_latency_p50_s": percentile(gaps, 50),
        "token_latency_p99_s": percentile(gaps, 99),
        "mean_batch_size": seqs / steps if steps else None,
        "peak_kv_cache_bytes": samples["kv_cache_bytes"],
        "peak_active_sequences": samples["active_sequences"],
        "peak_queue_depth": samples["queue_depth"],
        "peak_rss_anon_bytes": samples["RssAnon"],
        "peak_rss_file_bytes": samples["RssFile"],
        "peak_vm_rss_bytes": samples["VmRSS"],
    }


def ms(x):
    return "-" if x is None else f"{x * 1000:.1f}"


def mib(x):
    return "-" if not x else f"{x / 2**20:.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/slimlm")
    ap.add_argument("--model", default="target/bench-models/gpt2-124m.int8")
    ap.add_argument("--streams", default="1,4,8,16", help="concurrencies, comma-separated")
    ap.add_argument("--requests", type=int, default=2, help="requests per client thread")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    ap.add_argument("--threads", type=int, default=None, help="--threads of the server")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more argument for `slimlm serve` (repeat: --server-arg=--kv-cache --server-arg=f16)")
    ap.add_argument("--timeout", type=float, default=600, help="bound of the whole run, seconds")
    ap.add_argument("--out", default="target/bench-results/serve.json")
    args = ap.parse_args()

    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    if not streams or min(streams) < 1:
        ap.error("--streams needs positive integers")
    for name in ("bin", "model", "out"):
        p = Path(getattr(args, name))
        if not p.is_absolute():
            setattr(args, name, str(REPO / p))
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"load.py: {args.bin} is missing: cargo build --release")
    if not Path(args.model).is_dir():
        sys.exit(f"load.py: model directory {args.model} is missing")

    start = time.monotonic()
    deadline = start + args.timeout
    server = Server(args, deadline)

    def watchdog():
        server.kill()
        sys.stderr.write(f"load.py: the run passed --timeout {args.timeout:.0f} s; server killed\n")
        sys.stderr.flush()
        os._exit(2)

    wd = threading.Timer(args.timeout + 30, watchdog)  # phases stop at the deadline; this is the backstop
    wd.daemon = True
    wd.start()

    phases = []
    try:
        # Warm-up (page in the weights), and the prompt's length.
        c = server.conn(60)
        c.request("POST", "/v1/completions",
                  body=json.dumps({"prompt": PROMPT, "max_tokens": 4, "temperature": 0}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        warm = json.loads(r.read())
        c.close()
        if r.status != 200:
            raise SystemExit(f"load.py: warm-up request failed: {r.status} {warm}")
        prompt_tokens = warm["usage"]["prompt_tokens"]
        model_id = warm["model"]

        for n in streams:
            if time.monotonic() > deadline:
                print(f"load.py: --timeout reached before the {n}-stream phase", file=sys.stderr)
                break
            print(f"load.py: {n} stream(s) x {args.requests} request(s) x {args.tokens} tokens …",
                  file=sys.stderr, flush=True)
            phases.append(run_phase(server, n, args.requests, args.tokens, deadline))
        final_status = proc_status(server.proc.pid)
        final_metrics = server.metrics()
    finally:
        rc = server.stop()
        wd.cancel()

    base = next((p["tokens_per_s"] for p in phases if p["streams"] == 1), None)
    for p in phases:
        p["ratio_vs_1"] = (p["tokens_per_s"] / base) if base and p["tokens_per_s"] else None
    largest = max(phases, key=lambda p: p["streams"]) if phases else None
    memory = {
        "vm_hwm_bytes": final_status.get("VmHWM"),
        "vm_rss_bytes": final_status.get("VmRSS"),
        "rss_anon_bytes": final_status.get("RssAnon"),
        "rss_file_bytes": final_status.get("RssFile"),
        "peak_rss_anon_bytes": max([p["peak_rss_anon_bytes"] for p in phases] or [0]),
        "peak_rss_file_bytes": max([p["peak_rss_file_bytes"] for p in phases] or [0]),
        "kv_cache_bytes_peak_largest_phase": largest["peak_kv_cache_bytes"] if largest else None,
        "kv_cache_bytes_at_end": final_metrics.get("slimlm_kv_cache_bytes"),
    }

    print(f"## slimlm serve load: {Path(args.model).name}, prompt {prompt_tokens} tokens, "
          f"{args.tokens} new tokens per request, {args.requests} request(s) per stream\n")
    print("| streams | requests | errors | tokens | wall s | decode tok/s | vs c=1 | mean batch "
          "| TTFT p50 ms | TTFT p99 ms | token p50 ms | token p99 ms | peak KV cache |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        ratio = "-" if p["ratio_vs_1"] is None else f"{p['ratio_vs_1']:.2f}x"
        tps = "-" if p["tokens_per_s"] is None else f"{p['tokens_per_s']:.1f}"
        mb = "-" if p["mean_batch_size"] is None else f"{p['mean_batch_size']:.2f}"
        print(f"| {p['streams']} | {p['requests']} | {p['error_count']} | {p['tokens']} | {p['wall_s']:.2f} "
              f"| {tps} | {ratio} | {mb} | {ms(p['ttft_p50_s'])} | {ms(p['ttft_p99_s'])} "
              f"| {ms(p['token_latency_p50_s'])} | {ms(p['token_latency_p99_s'])} "
              f"| {mib(p['peak_kv_cache_bytes'])} |")
    print()
    print(f"Server memory: peak RSS (VmHWM) {mib(memory['vm_hwm_bytes'])}; peak RssAnon "
          f"{mib(memory['peak_rss_anon_bytes'])}, peak RssFile {mib(memory['peak_rss_file_bytes'])}; "
          f"slimlm_kv_cache_bytes peak in the {largest['streams'] if largest else '-'}-stream phase: "
          f"{mib(memory['kv_cache_bytes_peak_largest_phase'])}. Server exit code after SIGTERM: {rc}.")
    errs = [e for p in phases for e in p["errors"]]
    if errs:
        print(f"\nErrors (first): {errs[:5]}")

    out = {
        "benchmark": "serve-load",
        "model": args.model,
        "model_id": model_id,
        "bin": args.bin,
        "server_cmd": server.cmd,
        "prompt": PROMPT,
        "prompt_tokens": prompt_tokens,
        "tokens_per_request": args.tokens,
        "requests_per_stream": args.requests,
        "phases": phases,
        "memory": memory,
        "server_exit_code": rc,
        "elapsed_s": time.monotonic() - start,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nJSON: {args.out}", file=sys.stderr)
    failed = any(p["error_count"] for p in phases) or len(phases) < len(streams) or rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
