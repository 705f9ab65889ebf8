#!/usr/bin/env python3
"""Benchmark iawlb against HAProxy, nginx stream and pen on this machine.

Method
------
Everything runs on the loopback interface of this one machine, unpinned
(no taskset: clients, proxies and backends share all CPUs).

Backends: ONE nginx (worker_processes auto, access log off, error log to a
temporary file) listens on three ports. It serves ``GET /`` with a short body
(``hello\\n``) and ``GET /big`` with a large file on /dev/shm (1 GiB; 256 MiB
with --quick), which is created once and removed at the end.

Targets, all in front of those three ports:

* direct  -- no proxy, clients talk to the first backend port: the physical
  limit of the machine (the three ports are served by the same nginx workers,
  so spreading the clients over them would not change the load);
* iawlb   -- ``./iawlb -a roundrobin --idle-timeout 0``;
* haproxy -- ``mode tcp``, ``balance roundrobin``, ``nbthread`` = CPUs;
* nginx   -- ``stream`` module, ``worker_processes auto``;
* pen     -- ``-r`` (round robin without client tracking).

Every proxy runs in the foreground as a child process, logging off, with its
connection limit raised to fit the largest test, and its idle timeouts long
enough (1 h or never) for the memory test. All configuration files are
generated into a temporary directory.

Workloads (wrk for HTTP, curl for bulk, Python sockets for memory):

* connection rate: ``wrk -t2 -c64 -d4s -H 'Connection: close'``, successful
  responses per second (wrk's Requests/sec minus non-2xx/3xx responses);
* keep-alive request rate: the same without Connection: close;
* latency on one connection: ``wrk -t1 -c1 -d4s --latency``, p50 and p99;
* bulk: one curl download of /big (MB/s, 1 MB = 10^6 bytes), then four in
  parallel (aggregate MB/s = total bytes / wall time); a download counts only
  with status 200 and exactly the file's size;
* memory: on a freshly started proxy, the idle RSS (sum of VmRSS over the
  proxy's processes), then N idle keep-alive connections, each of which sent
  ``GET /`` and read a complete response; after 1 s every one must still be
  open (a non-blocking peek gives EAGAIN, not EOF); then RSS again, and
  KiB per connection = (RSS with N - idle RSS) / N. N = 1000 and the largest
  multiple of 1000 (up to 10000) such that the proxy's 2N descriptors fit
  under the hard open-file limit.

Rounds: every workload runs in rounds (default 3); the order of the targets
rotates each round. A cell is the median over rounds with its min-max spread,
and the median of the per-round ratios to direct (d) and to HAProxy (h).

Every step has a timeout; every process started here runs in its own session
and its whole process group is stopped at the end, on error, on Ctrl-C and on
SIGTERM. Raw outputs (wrk and curl output, proxy logs, configurations) and the
report are saved into bench/results/DATE-TIME/.
"""

import argparse
import datetime
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("direct", "iawlb", "haproxy", "nginx", "pen")
PROXIES = TARGETS[1:]
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
APT_HINT = "apt-get install -y haproxy nginx-light libnginx-mod-stream pen wrk curl"
HOST = "127.0.0.1"
BODY = b"hello\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
FD_MARGIN = 200          # descriptors kept free besides the connections
MB = 1e6
MIB = 1 << 20


# ------------------------------------------------------------------ errors

class Interrupted(Exception):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP arrived; unwinds to the cleanup."""


class StepFailed(Exception):
    """A workload or a start-up failed; the message says why."""


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


# ------------------------------------------------------------------ settings

@dataclass
class Settings:
    rounds: int
    quick: bool
    duration: int                     # seconds of each wrk run
    targets: list
    bulk: bool
    bulk_size: int                    # bytes of /big
    memory: bool
    mem_sizes: list                   # the N of the memory test
    maxconn: int                      # connection limit given to every proxy
    fd_hard: int                      # hard RLIMIT_NOFILE
    cpus: int
    iawlb: Path
    wrk_threads: int = 2
    wrk_conns: int = 64


@dataclass
class Context:
    """What every step needs: settings, directories, the backends."""
    s: Settings
    tmp: Path                         # configurations, pid files
    raw: Path                         # bench/results/DATE-TIME
    docroot: Path = None              # on /dev/shm, holds /big
    backend_ports: list = field(default_factory=list)


# ------------------------------------------------------------------ processes

class Children:
    """Every process started by the benchmark, each leading its own group."""

    def __init__(self):
        self.procs = []

    def start(self, args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc, grace=5.0):
        """SIGTERM the group, SIGKILL it after `grace` seconds, reap it."""
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        wait_group_gone(proc.pid, grace)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            try:
                self.stop(proc, grace=3.0)
            except Exception as e:        # keep going: stop the others
                print(f"warning: stopping pid {proc.pid}: {e}", file=sys.stderr)


CHILDREN = Children()


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group_gone(pgid, timeout):
    """Wait until no process is left in group `pgid` (e.g. nginx workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)


def run(args, timeout, raw_file=None):
    """Run a command to completion (bounded); return (rc, stdout+stderr).

    rc is None when the command timed out. The output, preceded by the
    command line, is also saved into raw_file when one is given.
    """
    proc = CHILDREN.start(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        out, rc = b"", None
    finally:                     # also on Ctrl-C: nothing may outlive the step
        CHILDREN.stop(proc, grace=1.0)
    if rc is None:
        out = proc.communicate()[0]
    text = out.decode(errors="replace")
    if raw_file:
        status = "TIMEOUT" if rc is None else f"exit {rc}"
        raw_file.write_text(f"$ {shlex.join(map(str, args))}\n{text}\n[{status}]\n")
    return rc, text


def first_line(args):
    try:
        _, out = run(args, timeout=10)
    except OSError as e:
        return f"({e})"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"


# ------------------------------------------------------------------ sockets

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=10.0):
    """Wait until `port` accepts connections; fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StepFailed(f"exited with status {proc.returncode} before listening")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise StepFailed(f"not listening on port {port} after {timeout:.0f} s")


def http_get(port, path="/", method="GET", timeout=5.0):
    """One small request with Connection: close; return (status, head, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                  .encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else None), head, body


def check_relay(port, attempts=3):
    """One GET / through the target must return 200 and the short body."""
    reason = ""
    for _ in range(attempts):
        try:
            status, _, body = http_get(port, timeout=3.0)
            if status == 200 and body == BODY:
                return
            reason = f"GET / returned status {status}, body {body[:40]!r}"
        except OSError as e:
            reason = f"GET / failed: {e}"
        time.sleep(0.3)
    raise StepFailed(reason)


def response_complete(buf):
    """True when `buf` holds a whole 200 response with a Content-Length body."""
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise StepFailed(f"unexpected response {head[:40]!r}")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


# ------------------------------------------------------------------ rss

def process_tree(root):
    """PIDs of `root` and of all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def rss_kib(root):
    """Sum of VmRSS (KiB) over `root` and its descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(m.group(1)) if m else 0
    return total


# ------------------------------------------------------------------ backends

def nginx_paths(prefix):
    """Directives that keep an nginx inside its own prefix directory."""
    return f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log error;\n"


def backend_config(ctx, prefix):
    listens = "".join(f"        listen {HOST}:{p} backlog=4096;\n" for p in ctx.backend_ports)
    temps = "".join(f"    {name}_temp_path {prefix}/{name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# backend: one nginx on three ports
worker_processes auto;
worker_rlimit_nofile {ctx.s.fd_hard};
{nginx_paths(prefix)}
events {{ worker_connections {ctx.s.fd_hard - FD_MARGIN}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 1h;
    keepalive_requests 1000000000;
{temps}    server {{
{listens}        root {ctx.docroot};
        location = / {{ default_type text/plain; return 200 "hello\\n"; }}
        location = /big {{ default_type application/octet-stream; }}
        location = /status {{ stub_status; }}
    }}
}}
"""


def launch(ctx, name, tag, args):
    """Start a server in the foreground, its output appended to NAME.stderr.txt."""
    with open(ctx.raw / f"{name}.stderr.txt", "ab") as log:
        log.write(f"==== {tag}: {shlex.join(map(str, args))}\n".encode())
        log.flush()
        return CHILDREN.start(args, stdout=log, stderr=log)


def start_nginx(ctx, name, tag, make_config):
    """Start an nginx in the foreground inside its own prefix directory."""
    prefix = ctx.tmp / name
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(make_config(prefix))
    return launch(ctx, name, tag, ["nginx", "-p", prefix, "-c", conf,
                                   "-e", prefix / "error.log", "-g", "daemon off;"])


def make_big_file(ctx):
    ctx.docroot = Path(tempfile.mkdtemp(prefix="iawlb-bench-", dir="/dev/shm"))
    ctx.docroot.chmod(0o755)
    chunk = bytes(range(256)) * 4096           # 1 MiB
    big = ctx.docroot / "big"
    with open(big, "wb") as f:
        for _ in range(ctx.s.bulk_size // len(chunk)):
            f.write(chunk)
    big.chmod(0o644)


def start_backends(ctx):
    ctx.backend_ports = [free_port() for _ in range(3)]
    proc = start_nginx(ctx, "backend", "start",
                       lambda prefix: backend_config(ctx, prefix))
    for port in ctx.backend_ports:
        wait_ready(port, proc)
    check_relay(ctx.backend_ports[0])
    status, head, _ = http_get(ctx.backend_ports[0], "/big", method="HEAD")
    if status != 200 or f"Content-Length: {ctx.s.bulk_size}".encode() not in head:
        raise StepFailed(f"backend HEAD /big: status {status}, not {ctx.s.bulk_size} bytes")


def backend_active_connections(ctx):
    """nginx stub_status "Active connections", minus our own request."""
    _, _, body = http_get(ctx.backend_ports[0], "/status")
    m = re.search(rb"Active connections:\s*(\d+)", body)
    return int(m.group(1)) - 1 if m else -1


# ------------------------------------------------------------------ proxies

def start_iawlb(ctx, tag, port, dests):
    return launch(ctx, "iawlb", tag, [
        ctx.s.iawlb, "-c", ctx.s.maxconn, "-a", "roundrobin", "--idle-timeout", "0",
        "--grace", "1s", f"{HOST}:{port}", *dests])


def start_haproxy(ctx, tag, port, dests):
    servers = "".join(f"    server s{i} {d}\n" for i, d in enumerate(dests, 1))
    conf = ctx.tmp / "haproxy" / "haproxy.cfg"
    conf.parent.mkdir(exist_ok=True)
    conf.write_text(f"""global
    nbthread {ctx.s.cpus}
    maxconn {ctx.s.maxconn}
defaults
    mode tcp
    maxconn {ctx.s.maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind {HOST}:{port}
    default_backend be
backend be
    balance roundrobin
{servers}""")
    return launch(ctx, "haproxy", tag, ["haproxy", "-db", "-f", conf])


def nginx_stream_config(ctx, port, dests, prefix):
    servers = "".join(f"        server {d};\n" for d in dests)
    return f"""# proxy: nginx stream
load_module {STREAM_MODULE};
worker_processes auto;
worker_rlimit_nofile {ctx.s.fd_hard};
{nginx_paths(prefix)}
events {{ worker_connections {ctx.s.fd_hard - FD_MARGIN}; }}
stream {{
    upstream be {{
{servers}    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        proxy_pass be;
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
    }}
}}
"""


def start_nginx_proxy(ctx, tag, port, dests):
    return start_nginx(ctx, "nginx", tag,
                       lambda prefix: nginx_stream_config(ctx, port, dests, prefix))


def start_pen(ctx, tag, port, dests):
    return launch(ctx, "pen", tag, ["pen", "-f", "-r", "-x", ctx.s.maxconn,
                                    "-c", ctx.s.maxconn, f"{HOST}:{port}", *dests])


PROXY_STARTERS = {"iawlb": start_iawlb, "haproxy": start_haproxy,
                  "nginx": start_nginx_proxy, "pen": start_pen}


@dataclass
class Running:
    name: str
    port: int
    proc: subprocess.Popen = None


def start_target(ctx, name, tag):
    """Start `name` (nothing for direct), wait for it, check that it relays."""
    if name == "direct":
        check_relay(ctx.backend_ports[0])
        return Running(name, ctx.backend_ports[0])
    port = free_port()
    dests = [f"{HOST}:{p}" for p in ctx.backend_ports]
    proc = PROXY_STARTERS[name](ctx, tag, port, dests)
    running = Running(name, port, proc)
    try:
        wait_ready(port, proc)
        check_relay(port)
    except StepFailed as e:
        stop_target(running)
        raise StepFailed(f"{e}; {name}.stderr.txt ends: {last_line(ctx, name)}")
    except BaseException:
        stop_target(running)
        raise
    return running


def last_line(ctx, name):
    log = ctx.raw / f"{name}.stderr.txt"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    if not lines or lines[-1].startswith("==== "):     # only our own header
        return "(no output)"
    return lines[-1].strip()


def stop_target(running):
    if running.proc is not None:
        CHILDREN.stop(running.proc)


# ------------------------------------------------------------------ wrk

DURATION_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise StepFailed(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * DURATION_US[m.group(2)]


@dataclass
class WrkResult:
    rps: float               # successful responses per second
    errors: str              # "" when none
    p50: float = None        # microseconds
    p99: float = None


def parse_wrk(out):
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise StepFailed("wrk printed no Requests/sec")
    requests = int(total.group(1))
    if requests == 0:
        raise StepFailed("wrk completed no request")
    errors = []
    sock = re.search(r"Socket errors: (.*)", out)
    if sock:
        errors.append(f"socket errors: {sock.group(1).strip()}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    if bad:
        errors.append(f"{bad} non-2xx/3xx of {requests} responses")
    result = WrkResult(float(rps.group(1)) * (requests - bad) / requests, "; ".join(errors))
    dist = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" in dist and "99" in dist:
        result.p50, result.p99 = to_us(dist["50"]), to_us(dist["99"])
    return result


def wrk(ctx, port, raw_file, threads, conns, extra=()):
    d = ctx.s.duration
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{d}s", *extra, f"http://{HOST}:{port}/"]
    rc, out = run(args, timeout=d + 30, raw_file=raw_file)
    if rc != 0:
        raise StepFailed("wrk timed out" if rc is None else f"wrk exited with {rc}")
    return parse_wrk(out)


# ------------------------------------------------------------------ results

@dataclass
class Outcome:
    value: float = None      # None: failed
    note: str = ""           # why it failed, or the errors of a counted run


class Results:
    """figure -> target -> one Outcome per round; notes for the legend."""

    def __init__(self, rounds):
        self.rounds = rounds
        self.cells = {}

    def put(self, figure, target, rnd, value=None, note=""):
        row = self.cells.setdefault(figure, {})
        row.setdefault(target, [None] * self.rounds)[rnd] = Outcome(value, note)

    def get(self, figure, target):
        return self.cells.get(figure, {}).get(target, [None] * self.rounds)


def fail_all(results, figures, name, rnd, reason):
    for fig in figures:
        results.put(fig, name, rnd, None, reason)


# ------------------------------------------------------------------ workloads

def measure_http(ctx, running, rnd, results, tag):
    """Connection rate, keep-alive rate, latency on one connection."""
    t, c, port = ctx.s.wrk_threads, ctx.s.wrk_conns, running.port
    runs = [("conn", (t, c, ["-H", "Connection: close"])),
            ("ka", (t, c, [])),
            ("lat", (1, 1, ["--latency"]))]
    for key, (threads, conns, extra) in runs:
        figures = ["p50", "p99"] if key == "lat" else [key]
        try:
            r = wrk(ctx, port, ctx.raw / f"{tag}-wrk-{key}.txt", threads, conns, extra)
        except StepFailed as e:
            fail_all(results, figures, running.name, rnd, str(e))
            continue
        if key == "lat":
            if r.p50 is None:
                fail_all(results, figures, running.name, rnd, "no latency distribution")
                continue
            results.put("p50", running.name, rnd, r.p50, r.errors)
            results.put("p99", running.name, rnd, r.p99, r.errors)
        else:
            results.put(key, running.name, rnd, r.rps, r.errors)
        progress(f"{running.name} {key}: {r.rps:.0f} req/s"
                 + (f", p50 {r.p50:.0f} us, p99 {r.p99:.0f} us" if key == "lat" else "")
                 + (f" [{r.errors}]" if r.errors else ""))


def curl_args(port):
    return ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "--max-time", "120",
            "-w", "%{http_code} %{size_download} %{speed_download}",
            f"http://{HOST}:{port}/big"]


def check_download(out, size):
    """Parse curl's -w line; return bytes per second or raise StepFailed."""
    fields = out.split()
    if len(fields) != 3:
        raise StepFailed(f"curl printed {out.strip()!r}")
    code, got, speed = fields
    if code != "200" or int(got) != size:
        raise StepFailed(f"curl got status {code} and {got} of {size} bytes")
    return float(speed)


def bulk_single(ctx, port, raw_file):
    rc, out = run(curl_args(port), timeout=130, raw_file=raw_file)
    if rc != 0:
        raise StepFailed("curl timed out" if rc is None else f"curl exited with {rc}")
    return check_download(out, ctx.s.bulk_size) / MB


def bulk_parallel(ctx, port, raw_file, count=4):
    procs, outputs, wall = [], [], None
    start = time.monotonic()
    try:
        for _ in range(count):
            procs.append(CHILDREN.start(curl_args(port), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT))
        for proc in procs:
            left = max(1.0, start + 130 - time.monotonic())
            out, _ = proc.communicate(timeout=left)
            outputs.append((proc.returncode, out.decode(errors="replace")))
        wall = time.monotonic() - start
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            CHILDREN.stop(proc, grace=1.0)
    raw_file.write_text(f"$ {count} x {shlex.join(curl_args(port))}\n"
                        + "".join(f"[exit {rc}] {out}\n" for rc, out in outputs)
                        + ("[TIMEOUT]\n" if wall is None else f"wall time {wall:.3f} s\n"))
    if wall is None:
        raise StepFailed("parallel curl timed out")
    for rc, out in outputs:
        if rc != 0:
            raise StepFailed(f"a parallel curl exited with {rc}")
        check_download(out, ctx.s.bulk_size)
    return count * ctx.s.bulk_size / wall / MB


def measure_bulk(ctx, running, rnd, results, tag):
    for key, fn in (("bulk1", bulk_single), ("bulk4", bulk_parallel)):
        try:
            mbps = fn(ctx, running.port, ctx.raw / f"{tag}-curl-{key}.txt")
        except StepFailed as e:
            results.put(key, running.name, rnd, None, str(e))
            continue
        results.put(key, running.name, rnd, mbps)
        progress(f"{running.name} {key}: {mbps:.0f} MB/s")


def open_idle_connections(port, n, socks, deadline, batch=250):
    """Open n connections; each sends GET / and reads a full response."""
    sel = selectors.DefaultSelector()
    try:
        for first in range(0, n, batch):
            pending = {}
            for _ in range(min(batch, n - first)):
                s = socket.socket()
                socks.append(s)
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect((HOST, port))
                s.sendall(REQUEST)
                s.setblocking(False)
                pending[s] = bytearray()
                sel.register(s, selectors.EVENT_READ)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StepFailed(f"only {len(socks) - len(pending)} of {n} "
                                     "connections got a response in time")
                for key, _ in sel.select(timeout=left):
                    s = key.fileobj
                    data = s.recv(65536)
                    if not data:
                        raise StepFailed(f"a connection closed before its response "
                                         f"({len(socks) - len(pending)} of {n} answered)")
                    pending[s] += data
                    if response_complete(bytes(pending[s])):
                        sel.unregister(s)
                        del pending[s]
    except OSError as e:
        raise StepFailed(f"opening connection {len(socks)} of {n}: {e}")
    finally:
        sel.close()


def count_closed(socks):
    """Connections that are no longer open (EOF or error on a peek)."""
    closed = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def measure_memory_once(ctx, name, n, tag):
    """Fresh proxy: idle RSS, then RSS with n idle connections (KiB)."""
    running = start_target(ctx, name, tag)
    socks = []
    try:
        time.sleep(0.3)
        before = rss_kib(running.proc.pid)
        open_idle_connections(running.port, n, socks, time.monotonic() + 60)
        time.sleep(1.0)
        closed = count_closed(socks)
        active = backend_active_connections(ctx)
        after = rss_kib(running.proc.pid)
        (ctx.raw / f"{tag}.txt").write_text(
            f"N={n} idle RSS={before} KiB, RSS with N={after} KiB, closed after 1 s={closed}, "
            f"backend active connections={active}\n")
        if closed:
            raise StepFailed(f"{closed} of {n} connections were closed after 1 s")
        if active < n:
            raise StepFailed(f"the backends see only {active} of {n} connections")
        return before, after
    finally:
        for s in socks:
            s.close()
        stop_target(running)


def measure_memory(ctx, name, rnd, results, tag):
    for i, n in enumerate(ctx.s.mem_sizes):
        figures = [f"rss{n}", f"kib{n}"] + (["rss0"] if i == 0 else [])
        try:
            before, after = measure_memory_once(ctx, name, n, f"{tag}-mem{n}")
        except StepFailed as e:
            fail_all(results, figures, name, rnd, str(e))
            continue
        if i == 0:
            results.put("rss0", name, rnd, before / 1024)
        results.put(f"rss{n}", name, rnd, after / 1024)
        results.put(f"kib{n}", name, rnd, (after - before) / n)
        progress(f"{name} memory N={n}: {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
                 f"{(after - before) / n:.2f} KiB/conn")


def http_figures(ctx):
    return ["conn", "ka", "p50", "p99"] + (["bulk1", "bulk4"] if ctx.s.bulk else [])


def run_target_round(ctx, name, rnd, results):
    """All workloads of one round on one target."""
    tag = f"r{rnd + 1}-{name}"
    progress(f"round {rnd + 1}/{ctx.s.rounds}: {name}")
    try:
        running = start_target(ctx, name, tag)
    except StepFailed as e:
        reason = f"start: {e}"
        (ctx.raw / f"{tag}-failed.txt").write_text(reason + "\n")
        progress(f"{name} FAILED: {reason}")
        fail_all(results, http_figures(ctx), name, rnd, reason)
        if ctx.s.memory and name != "direct":
            fail_all(results, memory_figures(ctx), name, rnd, reason)
        return
    try:
        measure_http(ctx, running, rnd, results, tag)
        if ctx.s.bulk:
            measure_bulk(ctx, running, rnd, results, tag)
    finally:
        stop_target(running)
    if ctx.s.memory and name != "direct":
        try:
            measure_memory(ctx, name, rnd, results, tag)
        except StepFailed as e:   # a fresh start failed
            (ctx.raw / f"{tag}-memory-failed.txt").write_text(str(e) + "\n")
            fail_all(results, memory_figures(ctx), name, rnd, f"start: {e}")


def memory_figures(ctx):
    return ["rss0"] + [f"{k}{n}" for n in ctx.s.mem_sizes for k in ("rss", "kib")]


def progress(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ table

def figure_labels(ctx):
    s = ctx.s
    labels = {
        "conn": f"connection rate, req/s ({s.wrk_conns} conns, Connection: close)",
        "ka": f"keep-alive request rate, req/s ({s.wrk_conns} conns)",
        "p50": "latency p50, µs (1 connection)",
        "p99": "latency p99, µs (1 connection)",
        "bulk1": f"bulk, 1 download of {s.bulk_size // MIB} MiB, MB/s",
        "bulk4": f"bulk, 4 parallel downloads, aggregate MB/s",
        "rss0": "memory: idle RSS, MiB",
    }
    for n in s.mem_sizes:
        labels[f"rss{n}"] = f"memory: RSS with {n} idle conns, MiB"
        labels[f"kib{n}"] = f"memory: KiB per connection (N={n})"
    return labels


def fmt(v):
    a = abs(v)
    if a >= 1e5:
        return f"{v / 1e3:.0f}k"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def median_ratio(values, refs):
    ratios = [v.value / r.value for v, r in zip(values, refs)
              if v and r and v.value is not None and r.value]
    return statistics.median(ratios) if ratios else None


def format_cell(results, figure, name):
    outcomes = results.get(figure, name)
    if all(o is None for o in outcomes):
        return "—"
    ok = [o.value for o in outcomes if o and o.value is not None]
    if not ok:
        return "failed"
    cell = fmt(statistics.median(ok))
    if results.rounds > 1:
        cell += f" ({fmt(min(ok))}–{fmt(max(ok))})"
    for ref, letter in (("direct", "d"), ("haproxy", "h")):
        ratio = median_ratio(outcomes, results.get(figure, ref)) if name != ref else None
        if ratio is not None:
            cell += f" ×{ratio:.2f}{letter}"
    if any(o and o.value is not None and o.note for o in outcomes):
        cell += " !"
    if len(ok) < results.rounds:
        cell += f" [{len(ok)}/{results.rounds}]"
    return cell


def render_table(ctx, results):
    labels = figure_labels(ctx)
    names = ctx.s.targets
    lines = ["| workload | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for figure, label in labels.items():
        if figure in results.cells:
            cells = [format_cell(results, figure, n) for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_notes(ctx, results):
    """One line per target and message: the rounds and figures it concerns."""
    labels = figure_labels(ctx)
    grouped = {}
    for figure, row in results.cells.items():
        for name, outcomes in row.items():
            for rnd, o in enumerate(outcomes):
                if o and o.note:
                    kind = "failed" if o.value is None else "counted, with errors"
                    rounds, figures = grouped.setdefault((name, kind, o.note), (set(), []))
                    rounds.add(rnd + 1)
                    if figure not in figures:
                        figures.append(figure)
    notes = []
    for (name, kind, note), (rounds, figures) in grouped.items():
        what = ("all figures" if len(figures) == len(results.cells)
                else "; ".join(labels[f] for f in figures))
        notes.append(f"- {name}, round {', '.join(map(str, sorted(rounds)))}, "
                     f"{what}: {kind}: {note}")
    return notes


# ------------------------------------------------------------------ report

def machine_info():
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return (f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} CPUs, "
            f"{int(mem.group(1)) / MIB:.1f} GiB RAM")


def versions(ctx):
    pen = "pen (prints no version)"
    if shutil.which("dpkg-query"):
        rc, out = run(["dpkg-query", "-W", "-f", "${Version}", "pen"], timeout=10)
        if rc == 0:
            pen += f", Debian package {out.strip()}"
    _, head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], timeout=10)
    _, dirty = run(["git", "-C", str(REPO), "status", "--porcelain",
                    "--untracked-files=no"], timeout=10)
    tree = "dirty tree" if dirty.strip() else "clean tree"
    return [first_line(["haproxy", "-v"]), first_line(["nginx", "-v"]), pen,
            first_line(["wrk", "-v"]), first_line(["curl", "--version"]),
            f"{first_line([str(ctx.s.iawlb), '--version'])}, "
            f"git {head.strip()} ({tree}, tracked files)"]


def report(ctx, results, started, elapsed, command):
    s = ctx.s
    quick = ("quick mode: 1 round, wrk runs of 2 s, a 256 MiB file for bulk, "
             "memory with N=1000 only" if s.quick else "full mode")
    mem = (f"N = {', '.join(map(str, s.mem_sizes))} (hard open-file limit "
           f"{s.fd_hard}: the proxy needs 2N descriptors plus {FD_MARGIN})"
           if s.memory else "skipped")
    lines = [
        f"# iawlb benchmark, {started:%Y-%m-%d %H:%M:%S %Z}",
        "",
        f"- command: `{command}` (in {os.getcwd()})",
        f"- {quick}; {s.rounds} round(s), duration {elapsed:.0f} s",
        f"- machine: {machine_info()}; kernel {os.uname().release}; loopback only, "
        "nothing pinned (clients, proxies and backends share all CPUs)",
        "- versions: " + "; ".join(versions(ctx)),
        f"- backends: one nginx on 3 ports, GET / = 6-byte body, GET /big = "
        f"{s.bulk_size // MIB} MiB file on /dev/shm",
        "- direct: clients use the first backend port only (the same nginx "
        "workers serve all three ports)",
        f"- proxies: iawlb -a roundrobin --idle-timeout 0 -c {s.maxconn} "
        f"(workers: default, one per CPU); haproxy mode tcp, balance roundrobin, "
        f"nbthread {s.cpus}, maxconn {s.maxconn}; nginx stream, worker_processes auto, "
        f"worker_connections {s.fd_hard - FD_MARGIN}; pen -r -x {s.maxconn}; "
        "all without logging, idle timeouts 1 h or never",
        f"- wrk: -t{s.wrk_threads} -c{s.wrk_conns} -d{s.duration}s for the rates, "
        f"-t1 -c1 -d{s.duration}s --latency for latency; memory: {mem}",
        "",
        render_table(ctx, results),
        "",
        "Legend: median over rounds (min–max over rounds); ×Rd = median over "
        "rounds of the ratio to direct in the same round, ×Rh = the same "
        "against HAProxy (for latency and memory, lower is better); "
        "`!` = counted, but a round had errors (see notes); [k/n] = only k of "
        "n rounds succeeded; failed = no round succeeded (see notes and the "
        "raw files); — = not measured (memory has no proxy to measure for "
        "direct). Request rates count successful responses only. RSS is the "
        "sum of VmRSS over the proxy's processes (nginx: master + workers): "
        "user memory only, not the kernel's socket buffers; the idle figure "
        "includes tables sized for the raised limits (pen allocates its "
        "connection table for -x at start, so idle connections add nothing).",
    ]
    notes = render_notes(ctx, results)
    lines += ["", "Notes:", *notes] if notes else ["", "Notes: no errors."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ setup

def missing_programs(targets):
    needed = {"wrk", "curl", "nginx"} | {t for t in targets if t in ("haproxy", "pen")}
    missing = sorted(p for p in needed if shutil.which(p) is None)
    if "nginx" in targets and not Path(STREAM_MODULE).exists():
        missing.append(STREAM_MODULE)
    return missing


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def memory_sizes(hard, quick):
    largest = min(10000, (hard - FD_MARGIN) // 2 // 1000 * 1000)
    if largest < 1000:
        return []
    return [1000] if quick else sorted({1000, largest})


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Benchmark iawlb against HAProxy, nginx stream and pen on "
                    "loopback; prints one Markdown table and saves raw outputs "
                    "into bench/results/DATE-TIME/.")
    p.add_argument("--rounds", type=int, help="rounds per workload (default 3, quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="about 1 minute: 1 round, wrk 2 s, 256 MiB bulk file, "
                        "memory with N=1000 only")
    p.add_argument("--duration", type=int, help="seconds of each wrk run (default 4, quick 2)")
    p.add_argument("--only", help="comma-separated targets among " + ",".join(TARGETS))
    p.add_argument("--skip-memory", action="store_true", help="no memory test")
    p.add_argument("--skip-bulk", action="store_true", help="no bulk downloads")
    p.add_argument("--iawlb", default=str(REPO / "iawlb"), help="the balancer binary")
    return p.parse_args(argv)


def make_settings(args):
    targets = list(TARGETS)
    if args.only:
        targets = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            sys.exit(f"unknown target(s) {', '.join(unknown)}; choose among {', '.join(TARGETS)}")
    hard = raise_fd_limit()
    sizes = memory_sizes(hard, args.quick)
    return Settings(
        rounds=max(1, args.rounds or (1 if args.quick else 3)),
        quick=args.quick,
        duration=max(1, args.duration or (2 if args.quick else 4)),
        targets=targets,
        bulk=not args.skip_bulk,
        bulk_size=(256 if args.quick else 1024) * MIB,
        memory=not args.skip_memory and bool(sizes) and any(t in PROXIES for t in targets),
        mem_sizes=sizes,
        maxconn=(hard - FD_MARGIN) // 2,
        fd_hard=hard,
        cpus=len(os.sched_getaffinity(0)),
        iawlb=Path(args.iawlb).resolve(),
    )


def rotated(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def benchmark(ctx, results):
    progress(f"creating the {ctx.s.bulk_size // MIB} MiB file on /dev/shm")
    make_big_file(ctx)
    start_backends(ctx)
    progress(f"backend nginx on ports {ctx.backend_ports}; raw outputs in {ctx.raw}")
    for rnd in range(ctx.s.rounds):
        for name in rotated(ctx.s.targets, rnd):
            run_target_round(ctx, name, rnd, results)


def cleanup(ctx):
    CHILDREN.stop_all()
    for conf in sorted([*ctx.tmp.rglob("nginx.conf"), *ctx.tmp.rglob("haproxy.cfg")]):
        shutil.copy(conf, ctx.raw / f"config-{conf.parent.name}-{conf.name}")
    for log in sorted(ctx.tmp.rglob("error.log")):
        shutil.copy(log, ctx.raw / f"{log.parent.name}-error.log")
    shutil.rmtree(ctx.tmp, ignore_errors=True)
    if ctx.docroot:
        shutil.rmtree(ctx.docroot, ignore_errors=True)


def main(argv):
    args = parse_args(argv)
    settings = make_settings(args)
    missing = missing_programs(settings.targets)
    if missing:
        print(f"missing {', '.join(missing)}: {APT_HINT}")
        return 2
    if "iawlb" in settings.targets and not os.access(settings.iawlb, os.X_OK):
        print(f"{settings.iawlb} not found: build it with `make iawlb`")
        return 2

    command = shlex.join(["python3"] + sys.argv)
    started = datetime.datetime.now().astimezone()
    raw = REPO / "bench" / "results" / started.strftime("%Y%m%d-%H%M%S")
    raw.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="iawlb-bench-"))
    tmp.chmod(0o755)
    ctx = Context(settings, tmp, raw)
    results = Results(settings.rounds)
    t0 = time.monotonic()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    status = 0
    try:
        benchmark(ctx, results)
    except Interrupted as e:
        print(f"\ninterrupted ({e}): stopping everything", file=sys.stderr)
        status = 130
    except StepFailed as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cleanup(ctx)
    if status:
        print(f"partial raw outputs in {raw}", file=sys.stderr)
        return status

    text = report(ctx, results, started, time.monotonic() - t0, command)
    (raw / "report.md").write_text(text)
    print(text)
    print(f"Raw outputs and this report: {raw.relative_to(REPO)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
