"""Fixtures for the black-box tests of `slimlm serve`: start the release binary on a free port, wait
for its listening line, and stop it with SIGTERM (which must end it with exit code 0).

Nothing here may hang: every wait has a deadline, and a per-test watchdog kills the servers and
ends the run if a test goes past PER_TEST_TIMEOUT seconds.
"""

import faulthandler
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SLIMLM_SHARED") or REPO.parent / "shared")
MODEL_DIR = SHARED / "models" / "ref-gpt2"
MODEL_ID = MODEL_DIR.name
BIN = REPO / "target" / "release" / "slimlm"
HELDOUT = SHARED / "corpora" / "heldout" / "en-US.txt"

START_TIMEOUT = 60.0  # seconds until the listening line
STOP_TIMEOUT = 30.0  # seconds from SIGTERM to exit
PER_TEST_TIMEOUT = float(os.environ.get("SLIMLM_TEST_TIMEOUT", "300"))

LISTEN_RE = re.compile(r"^slimlm serve: listening on http://(\S+):(\d+)\s*$")

# Every server started by these fixtures, so that the watchdog can kill them.
_ALL_SERVERS = []


class Server:
    """A running `slimlm serve` process. Its stderr is drained by a thread (kept in `self.stderr`)."""

    def __init__(self, *flags, model=MODEL_DIR, threads=2):
        if not BIN.exists():
            pytest.fail(f"{BIN} is missing: build it first (cargo build --release)", pytrace=False)
        if not Path(model).is_dir():
            pytest.fail(f"model directory {model} is missing (set SLIMLM_SHARED?)", pytrace=False)
        cmd = [str(BIN), "serve", "--model", str(model), "--port", "0"]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        cmd += [str(f) for f in flags]
        self.cmd = cmd
        self.stderr_lines = []
        self._listening = threading.Event()
        self.host = None
        self.port = None
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        _ALL_SERVERS.append(self)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                self._reader.join(2)
                pytest.fail(
                    f"`{' '.join(cmd)}` exited with {self.proc.returncode} before listening; "
                    f"stderr:\n{self.stderr}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"`{' '.join(cmd)}` printed no listening line within {START_TIMEOUT:.0f} s; "
                    f"stderr:\n{self.stderr}",
                    pytrace=False,
                )
        self.url = f"http://{self.host}:{self.port}"

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            m = LISTEN_RE.match(line)
            if m and not self._listening.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._listening.set()

    @property
    def stderr(self):
        return "".join(self.stderr_lines[-200:])

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout=STOP_TIMEOUT):
        """The exit code, or None if the process is still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then the exit code (None if it had to be killed)."""
        self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
        self._reader.join(2)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def stop_and_check(server):
    running = server.proc.poll() is None
    rc = server.stop()
    if running:
        assert rc is not None, (
            f"the server did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM (killed); "
            f"stderr:\n{server.stderr}"
        )
    assert rc == 0, f"the server exited with {rc} after SIGTERM; stderr:\n{server.stderr}"


@pytest.fixture(scope="session")
def server():
    """The shared server: ref-gpt2, default batching, 2 threads."""
    s = Server()
    yield s
    stop_and_check(s)


@pytest.fixture(scope="session")
def base_url(server):
    return server.url


@pytest.fixture
def start_server():
    """A factory: `start_server("--max-batch", 1, "--queue", 1)` starts another server, stopped (and its
    exit code checked unless the test already stopped it) when the test ends."""
    started = []

    def start(*flags, **kw):
        s = Server(*flags, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        stop_and_check(s)


@pytest.fixture(autouse=True)
def _watchdog(request):
    """Ends the whole run if one test takes longer than PER_TEST_TIMEOUT seconds."""

    def expire():
        sys.stderr.write(
            f"\n!!! {request.node.nodeid} ran past {PER_TEST_TIMEOUT:.0f} s: killing the servers\n"
        )
        faulthandler.dump_traceback(file=sys.stderr)
        for s in _ALL_SERVERS:
            s.kill()
        sys.stderr.flush()
        os._exit(3)

    t = threading.Timer(PER_TEST_TIMEOUT, expire)
    t.daemon = True
    t.start()
    yield
    t.cancel()


# ---- helpers shared by the tests ----------------------------------------------------------------


def http(url, method="GET", body=None, headers=None, timeout=60):
    """One plain HTTP request: (status, headers as a dict with lower-case keys, body bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def parse_metrics(text):
    """Prometheus text → {'name{labels}': value}; also {'name': value} for unlabelled samples."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)(?:\s+\d+)?$", line)
        if not m:
            raise AssertionError(f"not a Prometheus sample line: {line!r}")
        v = m.group(2)
        out[m.group(1)] = float("inf") if v == "+Inf" else float(v)
    return out


def metrics(url, timeout=30):
    status, headers, body = http(url + "/metrics", timeout=timeout)
    assert status == 200, f"/metrics answered {status}: {body[:500]!r}"
    return parse_metrics(body.decode())


def wait_metric(url, name, pred, timeout=10.0, interval=0.05):
    """Polls /metrics until pred(value of `name`) holds; returns the value, or raises with the last."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = metrics(url).get(name)
        if last is not None and pred(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not reach the expected value in {timeout} s (last: {last})")
        time.sleep(interval)


def cli_generate(prompt=None, prompt_ids=None, max_tokens=16, extra=(), timeout=120):
    """`slimlm generate --greedy --json` on ref-gpt2; returns its JSON object."""
    cmd = [str(BIN), "generate", "--model", str(MODEL_DIR), "--max-tokens", str(max_tokens), "--greedy",
           "--json", "--threads", "2", *extra]
    if prompt_ids is not None:
        cmd += ["--prompt-ids", ",".join(str(i) for i in prompt_ids)]
    else:
        cmd += ["--prompt", prompt]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr}"
    return json.loads(r.stdout)


def heldout_prompts(n, max_chars=200):
    """n distinct English prompts from the held-out corpus (lines cut at a word boundary)."""
    out = []
    for line in HELDOUT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line) < 60:
            continue
        if len(line) > max_chars:
            line = line[:max_chars].rsplit(" ", 1)[0]
        if line not in out:
            out.append(line)
        if len(out) == n:
            return out
    raise AssertionError(f"{HELDOUT} has fewer than {n} usable lines")
