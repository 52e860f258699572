"""
Downtime of a move: an HTTP application with a volume of S MiB, of which
delta MiB changed after the bulk push, moved from n1 to n2 while a prober
fetches a page through both nodes' addresses every 10 ms.

    sudo .venv/bin/python bench/downtime.py [--json PATH] [--cases 1:0,1024:1]

A two-node lab (prefix flabb-, /var/lib/flocker-bench-lab) is built.  For
each case (S, delta) the application (flocker-lab/busybox, httpd serving
the volume at /data on port 80, published as 8080) is deployed on n1, an
index.html and S MiB of random data are written into its volume, and the
prober starts: a separate process on the host, which reaches the nodes
through the lab's host address (the lab's veth into its switch namespace).
Every 10 ms it opens a NEW TCP connection to n1:8080 and another to
n2:8080 and fetches /index.html (HTTP/1.0, 30 s limit per fetch, at most
120 s in all, stopping by itself a few seconds after the move).

The move is a deploy (the deploy library, as flocker-deploy runs it) that
puts the application on n2.  delta: when the source announces the bulk
push ("push" event, emitted after the bulk snapshot was taken), delta MiB
of random data are written into the volume on n1 with dd; the bulk push of
S = 1024 MiB takes longer than writing 100 MiB, and the bench checks that
the write ended before the source stopped the application, so the delta
is exactly what the final increment carries (its bytes are reported).

Downtime: the longest interval, from the move's start to 2 s after it
ended, with no successful fetch (HTTP 200 with the page) through any
address, measured between fetch completions.  refused: connection attempts
refused or reset.  Held connections (SYNs dropped while the application
is not serving anywhere) are neither: they are retried by the client's
TCP and succeed late.

The naive move, for (1024, 1): two deploys, as one would move an
application with plain docker and zfs: the first removes the application
(its container stops; its volume stays on n1), the second puts it on n2, so
the whole volume is sent while nothing serves it, then it starts there and
the proxies switch.  Its downtime is measured the same way.

JSON: {"downtime": [{"size_mib", "delta_mib", "downtime_s", "refused",
"naive_downtime_s" (naive case only), ...}]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    IMAGE, bench_lab, deploy, first, machine, print_table, require_root, say,
    write_configuration, write_json,
)

DEFAULT_CASES = [(1, 0), (1024, 0), (1024, 1), (1024, 100)]
NAIVE_CASE = (1024, 1)
PORT = 8080
PROBE_INTERVAL = 0.010
PROBE_MAX_SECONDS = 120.0
FETCH_TIMEOUT = 30.0
TAIL = 2.0  # seconds after the move that still count


# --- the prober (a child process) -------------------------------------------------

async def _fetch(address, port, marker):
    reader, writer = await asyncio.open_connection(address, port)
    try:
        writer.write(b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = await reader.read(65536)
        while True:
            more = await reader.read(65536)
            if not more:
                break
            data += more
    finally:
        writer.close()
    if not data:
        return "reset"  # accepted, then closed without an answer
    if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] \
            and marker in data:
        return "ok"
    return "http-error"


async def _probe(addresses, port, marker, stop_file, max_seconds, out_path):
    results = []
    pending = set()
    loop = asyncio.get_running_loop()
    began = time.monotonic()

    async def one(address):
        started = time.monotonic()
        try:
            outcome = await asyncio.wait_for(_fetch(address, port, marker),
                                             FETCH_TIMEOUT)
        except ConnectionRefusedError:
            outcome = "refused"
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        except asyncio.TimeoutError:
            outcome = "timeout"
        except asyncio.CancelledError:
            results.append((started, time.monotonic(), address, "unfinished"))
            raise
        except OSError as e:
            outcome = "error:%s" % (e.errno,)
        results.append((started, time.monotonic(), address, outcome))

    next_tick = began
    while time.monotonic() - began < max_seconds and not os.path.exists(stop_file):
        for address in addresses:
            task = loop.create_task(one(address))
            pending.add(task)
            task.add_done_callback(pending.discard)
        next_tick += PROBE_INTERVAL
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    # Fetches still waiting (held SYNs) get a moment, then are cut.
    if pending:
        await asyncio.wait(set(pending), timeout=2.0)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    with open(out_path + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(out_path + ".tmp", out_path)


def prober_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--max-seconds", type=float, default=PROBE_MAX_SECONDS)
    parser.add_argument("addresses", nargs="+")
    options = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    asyncio.run(_probe(options.addresses, PORT, options.marker.encode(),
                       options.stop_file, min(options.max_seconds,
                                              PROBE_MAX_SECONDS), options.out))
    return 0


class Prober:
    def __init__(self, workdir, name, addresses, marker):
        self.stop_file = os.path.join(workdir, name + ".stop")
        self.out = os.path.join(workdir, name + ".probe.json")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--probe",
             "--stop-file", self.stop_file, "--out", self.out,
             "--marker", marker] + list(addresses))

    def stop(self):
        with open(self.stop_file, "w"):
            pass
        try:
            self.process.wait(timeout=PROBE_MAX_SECONDS + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with open(self.out) as f:
            return [tuple(r) for r in json.load(f)]

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def analyse(results, start, end):
    """(downtime s, refused or reset, outcome counts) in [start, end]."""
    done = sorted(e for s, e, a, outcome in results
                  if outcome == "ok" and start <= e <= end)
    marks = [start] + done + [end]
    downtime = max(b - a for a, b in zip(marks, marks[1:]))
    counts = {}
    for s, e, a, outcome in results:
        if start <= s <= end:
            counts[outcome] = counts.get(outcome, 0) + 1
    refused = counts.get("refused", 0) + counts.get("reset", 0)
    return downtime, refused, counts


# --- the cases ----------------------------------------------------------------------

def fill(path, mib):
    subprocess.run(["dd", "if=/dev/urandom", "of=" + path, "bs=1M",
                    "count=%d" % (mib,), "iflag=fullblock", "status=none"],
                   check=True)


def wait_serving(addresses, marker, timeout=60.0):
    import urllib.request
    deadline = time.monotonic() + timeout
    waiting = set(addresses)
    while waiting:
        for address in list(waiting):
            try:
                with urllib.request.urlopen("http://%s:%d/index.html" % (
                        address, PORT), timeout=2) as response:
                    if marker.encode() in response.read():
                        waiting.discard(address)
            except OSError:
                pass
        if waiting and time.monotonic() > deadline:
            raise RuntimeError("the application does not answer through %s"
                               % (", ".join(sorted(waiting)),))
        time.sleep(0.1)


def zfs():
    return shutil.which("zfs") or "/sbin/zfs"


def remove_everywhere(lab, workdir, app, nodes):
    """Remove the application (a deploy), then its volume's copies."""
    empty = write_configuration(workdir, "empty", {n.address: [] for n in nodes}, {})
    deploy(lab, *empty)
    for node in nodes:
        dataset = "%s/%s" % (node.pool, app)
        for attempt in range(20):
            result = subprocess.run([zfs(), "destroy", "-r", "-f", dataset],
                                    capture_output=True)
            if result.returncode == 0 or b"does not exist" in result.stderr:
                break
            time.sleep(0.5)


def run_case(lab, workdir, size_mib, delta_mib, naive=False):
    n1, n2 = lab.nodes[:2]
    app = "web-s%d-d%d%s" % (size_mib, delta_mib, "-naive" if naive else "")
    marker = "flocker bench page of %s" % (app,)
    definition = {app: {"image": IMAGE, "ports": [{"internal": 80, "external": PORT}],
                        "volume": {"mountpoint": "/data"}}}
    on_n1 = write_configuration(workdir, app + "-on-n1",
                                {n1.address: [app], n2.address: []}, definition)
    on_n2 = write_configuration(workdir, app + "-on-n2",
                                {n1.address: [], n2.address: [app]}, definition)
    removed = write_configuration(workdir, app + "-removed",
                                  {n1.address: [], n2.address: []}, definition)
    say("case S=%d MiB, delta=%d MiB%s" % (size_mib, delta_mib,
                                           " (naive move)" if naive else ""))
    deploy(lab, *on_n1)
    volume = os.path.join(n1.mount_root, app)
    with open(os.path.join(volume, "index.html"), "w") as f:
        f.write("<html><body>%s</body></html>\n" % (marker,))
    started = time.monotonic()
    fill(os.path.join(volume, "bulk.bin"), size_mib)
    os.sync()
    say("  wrote %d MiB in %.1f s" % (size_mib, time.monotonic() - started))
    if naive and delta_mib:
        fill(os.path.join(volume, "delta.bin"), delta_mib)
    addresses = [n1.address, n2.address]
    wait_serving(addresses, marker)

    delta = {}

    def write_delta():
        fill(os.path.join(volume, "delta.bin"), delta_mib)
        delta["written"] = time.monotonic()

    def on_event(event):
        if (not naive and delta_mib and event.get("action") == "push"
                and event.get("application") == app and "writer" not in delta):
            delta["writer"] = threading.Thread(target=write_delta)
            delta["writer"].start()

    prober = Prober(workdir, app, addresses, marker)
    try:
        time.sleep(1.0)
        move_started = time.monotonic()
        if naive:
            first_deploy = deploy(lab, *removed)
            second_deploy = deploy(lab, *on_n2)
            events = first_deploy.events + second_deploy.events
        else:
            events = deploy(lab, *on_n2, on_event=on_event).events
        move_ended = time.monotonic()
        if "writer" in delta:
            delta["writer"].join()
        time.sleep(TAIL + 1.0)
        results = prober.stop()
    finally:
        prober.kill()
    downtime, refused, counts = analyse(results, move_started, move_ended + TAIL)
    stop = first(events, action="stop", application=app)
    final = first(events, action="transferred", application=app, phase="final-push")
    bulk = first(events, action="transferred", application=app, phase="push")
    row = {
        "size_mib": size_mib, "delta_mib": delta_mib,
        "downtime_s": round(downtime, 3), "refused": refused,
        "outcomes": counts, "move_s": round(move_ended - move_started, 2),
        "bulk_push_bytes": bulk and bulk["bytes"],
        "final_push_bytes": final and final["bytes"],
    }
    if not naive and delta_mib:
        ok = stop is not None and delta.get("written", float("inf")) < stop["t"]
        row["delta_written_before_stop"] = ok
        if not ok:
            say("  WARNING: the delta was not written before the source stopped "
                "the application")
    say("  downtime %.3f s, refused/reset %d, move %.1f s, outcomes %s, "
        "final increment %s bytes" % (downtime, refused, move_ended - move_started,
                                      counts, row["final_push_bytes"]))
    remove_everywhere(lab, workdir, app, (n1, n2))
    return row


def measure(lab, options, workdir):
    rows = []
    for size_mib, delta_mib in options.cases:
        rows.append(run_case(lab, workdir, size_mib, delta_mib))
    if options.naive:
        naive = run_case(lab, workdir, *NAIVE_CASE, naive=True)
        for row in rows:
            if (row["size_mib"], row["delta_mib"]) == NAIVE_CASE:
                row["naive_downtime_s"] = naive["downtime_s"]
                row["naive_refused"] = naive["refused"]
                row["naive_move_s"] = naive["move_s"]
                break
        else:
            rows.append(dict(naive, naive_downtime_s=naive["downtime_s"],
                             naive_only=True))
    return rows


def report(rows):
    base = next((r["downtime_s"] for r in rows
                 if (r["size_mib"], r["delta_mib"]) == (1, 0)), None)
    table = []
    for r in rows:
        naive = r.get("naive_downtime_s")
        table.append([
            r["size_mib"], r["delta_mib"], r["downtime_s"],
            r["downtime_s"] / base if base else None, r["refused"], naive,
            naive / r["downtime_s"] if naive and r["downtime_s"] else None])
    print_table(
        "move downtime through n1 and n2 (a fetch every 10 ms per address); "
        "targets: refused 0, 1024/1 <= 1.5 x 1/0, naive >= 3 x",
        ["S MiB", "delta MiB", "downtime s", "x (1, 0)", "refused", "naive s",
         "naive / ours"], table)


def parse_cases(text):
    cases = []
    for item in text.split(","):
        size, _, delta = item.partition(":")
        cases.append((int(size), int(delta or 0)))
    return cases


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs root. Takes about 5 minutes with the default cases.")
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    parser.add_argument("--cases", type=parse_cases, default=DEFAULT_CASES,
                        metavar="S:D,...",
                        help="sizes and deltas in MiB (default "
                        "1:0,1024:0,1024:1,1024:100)")
    parser.add_argument("--no-naive", dest="naive", action="store_false",
                        help="skip the naive move of (1024, 1)")
    options = parser.parse_args(argv)
    for size, delta in options.cases:
        if not 1 <= size <= 1536 or not 0 <= delta <= size:
            parser.error("a case needs 1 <= S <= 1536 and 0 <= delta <= S")
    return options


def main(argv):
    options = parse_args(argv)
    require_root("bench/downtime.py")
    workdir = tempfile.mkdtemp(prefix="flocker-downtime-bench-")
    try:
        with bench_lab(2) as lab:
            rows = measure(lab, options, workdir)
        report(rows)
        write_json(options.json, {"downtime": rows, "machine": machine()})
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        sys.exit(prober_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
