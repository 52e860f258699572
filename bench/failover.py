"""
Surviving a dead node: the writes a take-over loses (RPO) against the
volume's replication_interval, and what standby replication costs the
owner in CPU per GiB replicated.

    sudo .venv/bin/python bench/failover.py [--json PATH] [--intervals 2,5,10]
        [--repeats 3] [--seed 1] [--cost-mib 256]

A three-node lab of its own (prefix flbf-, /var/lib/flocker-failover-bench-
lab) is built and removed afterwards, also after a failure.

RPO.  The application is flocker-lab/busybox (httpd serving its volume, port
80 published as 8080) with a CGI script in the volume that appends the
request's id to a file and answers only once the line is written; one
client on the host sends a write every 20 ms through the owner's address
and records when each was acknowledged.  The owner has one standby; for
each replication_interval (deployed as the volume's replication_interval)
and each repeat, once the standby has been replicated to, the client
writes for interval + 2 s plus a random time of up to 2 x interval
(random.Random(--seed)), then the owner is powered off (``Lab.power_off``:
every process SIGKILLed, link down) and flocker-deploy --down takes the
application over on the standby (the third node becoming its standby).
RPO = when the last write acknowledged before the power-off was
acknowledged - when the newest write present in the taken-over copy was
acknowledged.  Beside it: the window flocker-deploy stated before acting
("last replica ... N s before the owner was last heard from"), and the age
of the freshest surviving snapshot at the power-off (what "writes after
HH:MM:SS may be lost" promises, at full precision): RPO must not exceed
that age.  The old owner is then powered on, yields, and the roles rotate.

Cost.  A second application with a volume, replicated every 2 s from n1 to
n2.  First --idle-seconds with nothing written (the rounds still run), then
--cost-mib MiB of random data written into the volume in 16 MiB files,
until the standby holds all of it.  CPU seconds (utime + stime from
/proc/PID/stat) of the owner's flocker-node (its own, and its reaped
children's: the zfs commands it ran), of the owner's ``zfs send`` processes
(sampled every 20 ms while they live), and of zfs-fuse (which reads the
blocks and builds the stream; it serves every pool on the machine, so its
figure includes whatever else ran) are divided by the GiB replicated (the
bytes of every round, as the owner's ``state`` reports them).

JSON: {"failover": {"rpo": [{"interval_s", "median_s", "max_s",
"stated_median_s", "stated_max_s", "runs": [...]}], "cost": {...}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    IMAGE, MIB, bench_lab, cpu_seconds, daemon_pid, machine, pids_named,
    print_table, require_root, say, write_json,
)

from flocker_async.lab import LabError  # noqa: E402

PREFIX = "flbf-"
DIRECTORY = "/var/lib/flocker-failover-bench-lab"
BIN = os.path.dirname(sys.executable)
RPO_APP = "rpo"
COST_APP = "cost"
PORT = 8080
WRITE_PAUSE = 0.020
COST_INTERVAL = 2
CHUNK = 16 * MIB
GIB = 1024 * MIB

# Appends the request's id to the volume and answers once it is written:
# an acknowledged write is in the file system (the owner's snapshot flushes
# it before it is taken).
APPEND_CGI = """#!/bin/sh
echo "$QUERY_STRING" >> /data/acked
echo Content-Type: text/plain
echo
echo "ok $QUERY_STRING"
"""

class States:
    """The nodes' ``state`` reports (``Lab.state``)."""

    def __init__(self, lab):
        self.lab = lab

    def state(self, address):
        try:
            return self.lab.state(address)
        except LabError as e:
            raise RuntimeError(str(e))

    def replication(self, owner, app):
        """standby address -> status, as ``owner`` reports it."""
        return {s["standby"]: s for s in
                self.state(owner.address)["replication"].get(app, [])}

    def close(self):
        pass


def wait_until(predicate, timeout, what, interval=0.3):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except RuntimeError:
            pass  # a node not answering yet
        if time.monotonic() > deadline:
            raise RuntimeError("%s: not within %d s" % (what, timeout))
        time.sleep(interval)


def wait_replicated(states, owner, standby, app, since, timeout=120.0):
    """Until ``owner`` reports a round to ``standby`` that succeeded after
    ``since``; that status."""
    found = {}

    def done():
        status = states.replication(owner, app).get(standby.address)
        if status and status["last_error"] is None and (status["last_success"] or 0) > since:
            found["status"] = status
            return True
        return False
    wait_until(done, timeout, "%s replicated to %s" % (owner.name, standby.name))
    return found["status"]


# --- configuration and deploys ----------------------------------------------------

def application(apps):
    return json.dumps({"version": 1, "applications": apps}, indent=1)


def rpo_app(interval):
    return {RPO_APP: {"image": IMAGE, "ports": [{"internal": 80, "external": PORT}],
                      "volume": {"mountpoint": "/data",
                                 "replication_interval": "%ds" % (interval,)}}}


def cost_app():
    return {COST_APP: {"image": IMAGE, "volume": {
        "mountpoint": "/data", "replication_interval": "%ds" % (COST_INTERVAL,)}}}


def placement(lab, app, where, standby):
    """A deployment file: ``app`` on node ``where`` (or nowhere: None),
    with ``standby`` (nodes) as its standbys."""
    document = {"version": 1, "nodes": {
        n.address: [app] if where is not None and n.name == where.name else []
        for n in lab.nodes}}
    if where is not None and standby:
        document["standby"] = {app: [n.address for n in standby]}
    return json.dumps(document, indent=1)


def flocker_deploy(lab, workdir, deployment, applications, down=()):
    """Run flocker-deploy (as an operator would); its output."""
    dep = os.path.join(workdir, "deployment.yml")
    app = os.path.join(workdir, "application.yml")
    with open(dep, "w") as f:
        f.write(deployment)
    with open(app, "w") as f:
        f.write(application(applications))
    env = dict(os.environ)
    env.update(lab.env())
    options = ["--down", ",".join(n.address for n in down)] if down else []
    result = subprocess.run([os.path.join(BIN, "flocker-deploy")] + options + [dep, app],
                            env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError("flocker-deploy failed (exit %d):\n%s"
                           % (result.returncode, output))
    return output


# --- RPO -----------------------------------------------------------------------------

class Writer:
    """Writes through ``address`` one after the other, recording when each
    was acknowledged, until stopped."""

    def __init__(self, address, first_id):
        self.address = address
        self.next_id = first_id
        self.acked = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            write_id = self.next_id
            self.next_id += 1
            try:
                with urllib.request.urlopen("http://%s:%d/cgi-bin/w?%d" % (
                        self.address, PORT, write_id), timeout=2) as response:
                    if response.read().decode().strip() == "ok %d" % (write_id,):
                        self.acked[write_id] = time.time()
            except OSError:
                pass
            self.stopped.wait(WRITE_PAUSE)

    def stop(self):
        self.stopped.set()
        self.thread.join(30)


def newest_snapshot_time(node, app):
    from flocker_async.volume._common import snapshot_time
    out = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r",
                          "%s/%s" % (node.pool, app)], capture_output=True, text=True)
    times = [snapshot_time(line.split("@", 1)[1]) for line in out.stdout.split()
             if "@" in line]
    times = [t for t in times if t is not None]
    return max(times) if times else None


_STATED = re.compile(r"take-over: %s: last replica on \S+ is from [\d:]+, (\d+) s before"
                     % (RPO_APP,))


def one_takeover(lab, states, workdir, interval, roles, rng, first_id):
    """One power-off and take-over; the figures, and the roles after."""
    owner, standby, spare = roles
    wait_replicated(states, owner, standby, RPO_APP, since=time.time())
    writer = Writer(owner.address, first_id)
    writes_for = interval + 2 + rng.uniform(0, 2 * interval)
    time.sleep(writes_for)
    lab.power_off(owner.name)
    off = time.time()
    writer.stop()
    acked = dict(writer.acked)
    if not acked:
        raise RuntimeError("no write was acknowledged by %s" % (owner.name,))
    snapshot_at = newest_snapshot_time(standby, RPO_APP)
    output = flocker_deploy(lab, workdir, placement(lab, RPO_APP, standby, [spare]),
                            rpo_app(interval), down=[owner])
    stated = _STATED.search(output)
    with open(os.path.join(standby.mount_root, RPO_APP, "acked")) as f:
        present = {int(line) for line in f if line.strip().isdigit()}
    kept = [i for i in acked if i in present]
    last = max(acked.values())
    newest = acked[max(kept)] if kept else None
    lost = sorted(i for i in acked if i not in present)
    run = {
        "rpo_s": round(last - newest, 3) if newest is not None else None,
        "stated_s": int(stated.group(1)) if stated else None,
        "snapshot_age_s": round(off - snapshot_at, 3),
        "writes_acked": len(acked), "writes_lost": len(lost),
        "lost_before_snapshot": len([i for i in lost if acked[i] < snapshot_at]),
        "writes_for_s": round(writes_for, 2),
        "owner": owner.name, "taken_over_by": standby.name,
    }
    say("  interval %d s: RPO %s s (stated %s s, freshest snapshot %.2f s old at the "
        "power-off), %d of %d writes lost" % (
            interval, run["rpo_s"], run["stated_s"], run["snapshot_age_s"],
            len(lost), len(acked)))
    lab.power_on(owner.name)
    # The old owner yields: its copy set aside, its container gone.
    wait_until(lambda: not states.state(owner.address)["applications"]
               and not any(v["name"] == RPO_APP and v["writable"]
                           for v in states.state(owner.address)["volumes"]),
               120, "%s yields" % (owner.name,))
    return run, (standby, spare, owner), max(writer.next_id, first_id) + 1


def measure_rpo(lab, states, workdir, options):
    rng = random.Random(options.seed)
    n1, n2, n3 = lab.nodes[:3]
    roles = (n1, n2, n3)
    say("deploying %s on n1 (standby n2)" % (RPO_APP,))
    flocker_deploy(lab, workdir, placement(lab, RPO_APP, n1, [n2]),
                   rpo_app(options.intervals[0]))
    mount = os.path.join(n1.mount_root, RPO_APP)
    os.makedirs(os.path.join(mount, "cgi-bin"))
    with open(os.path.join(mount, "cgi-bin", "w"), "w") as f:
        f.write(APPEND_CGI)
    os.chmod(os.path.join(mount, "cgi-bin", "w"), 0o755)
    next_id = 1
    results = []
    for interval in options.intervals:
        owner, standby, spare = roles
        say("replication_interval %d s" % (interval,))
        flocker_deploy(lab, workdir, placement(lab, RPO_APP, owner, [standby]),
                       rpo_app(interval))
        runs = []
        for _ in range(options.repeats):
            run, roles, next_id = one_takeover(lab, states, workdir, interval, roles,
                                               rng, next_id)
            run["interval_s"] = interval
            runs.append(run)
        rpos = [r["rpo_s"] for r in runs if r["rpo_s"] is not None]
        stated = [r["stated_s"] for r in runs if r["stated_s"] is not None]
        results.append({
            "interval_s": interval,
            "median_s": round(statistics.median(rpos), 3) if rpos else None,
            "max_s": max(rpos) if rpos else None,
            "stated_median_s": statistics.median(stated) if stated else None,
            "stated_max_s": max(stated) if stated else None,
            "within_snapshot_age": all(r["lost_before_snapshot"] == 0 for r in runs),
            "runs": runs})
    return results


# --- cost ----------------------------------------------------------------------------

def proc_cpu(pid):
    """(own, reaped children's) CPU seconds of ``pid``."""
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick,
            (int(fields[13]) + int(fields[14])) / tick)


class SendSampler:
    """CPU seconds of the ``zfs send`` processes of ``dataset``, sampled
    every 20 ms while each lives (the last 20 ms of one may be missed)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.seen = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sends(self):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % (entry,), "rb") as f:
                    argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0")]
            except OSError:
                continue
            # zfs-fuse's zfs splits DATASET@SNAPSHOT in its argv.
            if (len(argv) > 2 and os.path.basename(argv[0]) == "zfs" and argv[1] == "send"
                    and any(a == self.dataset or a.startswith(self.dataset + "@")
                            for a in argv)):
                yield int(entry)

    def _run(self):
        while not self.stopped.is_set():
            for pid in self._sends():
                try:
                    self.seen[pid] = cpu_seconds(pid)
                except (OSError, IndexError, ValueError):
                    pass
            self.stopped.wait(0.02)

    def stop(self):
        self.stopped.set()
        self.thread.join(10)
        return sum(self.seen.values()), len(self.seen)


class ReplicatedBytes:
    """The bytes of every round from ``owner`` to ``standby`` that ends
    while it runs (the owner's ``state`` polled every 0.5 s; a round takes
    longer than that)."""

    def __init__(self, states, owner, standby, app):
        self.states, self.owner, self.standby, self.app = states, owner, standby, app
        status = states.replication(owner, app).get(standby.address) or {}
        self.last = status.get("last_success")
        self.total = 0
        self.rounds = 0
        self.last_snapshot_time = status.get("snapshot_time")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def poll(self):
        status = self.states.replication(self.owner, self.app).get(self.standby.address)
        if status and status["last_success"] != self.last and status["last_error"] is None:
            self.last = status["last_success"]
            self.total += status["last_bytes"]
            self.rounds += 1
            self.last_snapshot_time = status["snapshot_time"]

    def _run(self):
        while not self.stopped.is_set():
            try:
                self.poll()
            except RuntimeError:
                pass
            self.stopped.wait(0.5)

    def stop(self):
        self.stopped.set()
        self.thread.join(30)


def write_random(directory, total):
    """``total`` bytes of random data in 16 MiB files, each synced."""
    written = 0
    index = 0
    while written < total:
        size = min(CHUNK, total - written)
        with open(os.path.join(directory, "chunk-%04d.bin" % (index,)), "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MIB))
                f.write(block)
                left -= len(block)
            f.flush()
            os.fsync(f.fileno())
        written += size
        index += 1


def measure_cost(lab, states, workdir, options):
    n1, n2 = lab.nodes[:2]
    say("deploying %s on n1 (standby n2, replicated every %d s)" % (COST_APP, COST_INTERVAL))
    flocker_deploy(lab, workdir, placement(lab, COST_APP, n1, [n2]), cost_app())
    wait_replicated(states, n1, n2, COST_APP, since=time.time())
    daemon = daemon_pid(lab, n1.name)
    fuse = pids_named("zfs-fuse")

    def sample():
        own, children = proc_cpu(daemon)
        return own, children, sum(cpu_seconds(p) for p in fuse), time.monotonic()

    say("  %d s with nothing written" % (options.idle_seconds,))
    start = sample()
    time.sleep(options.idle_seconds)
    end = sample()
    idle_seconds = end[3] - start[3]
    idle = {"daemon_cpu_s_per_min": round((end[0] - start[0]) / idle_seconds * 60, 2),
            "daemon_children_cpu_s_per_min": round((end[1] - start[1]) / idle_seconds * 60, 2)}

    say("  writing %d MiB" % (options.cost_mib,))
    counted = ReplicatedBytes(states, n1, n2, COST_APP)
    sends = SendSampler("%s/%s" % (n1.pool, COST_APP))
    start = sample()
    write_random(os.path.join(n1.mount_root, COST_APP), options.cost_mib * MIB)
    written = time.time()
    wait_until(lambda: (counted.last_snapshot_time or 0) > written, 300,
               "the standby holds everything written")
    end = sample()
    counted.stop()
    send_cpu, send_processes = sends.stop()
    seconds = end[3] - start[3]
    gib = counted.total / GIB
    result = {
        "written_mib": options.cost_mib,
        "replicated_bytes": counted.total,
        "rounds": counted.rounds,
        "seconds": round(seconds, 1),
        "daemon_cpu_s": round(end[0] - start[0], 2),
        "daemon_children_cpu_s": round(end[1] - start[1], 2),
        "zfs_send_cpu_s": round(send_cpu, 2),
        "zfs_send_processes": send_processes,
        "zfs_fuse_cpu_s": round(end[2] - start[2], 2),
        "idle": idle,
    }
    for key in ("daemon_cpu_s", "daemon_children_cpu_s", "zfs_send_cpu_s",
                "zfs_fuse_cpu_s"):
        result[key.replace("_cpu_s", "_cpu_s_per_gib")] = (
            round(result[key] / gib, 2) if gib else None)
    idle_share = idle["daemon_cpu_s_per_min"] / 60 * seconds
    result["daemon_cpu_s_per_gib_net_of_idle"] = (
        round((result["daemon_cpu_s"] - idle_share) / gib, 2) if gib else None)
    say("  %.1f MiB replicated in %d rounds over %.1f s; owner daemon %.2f CPU s "
        "(+%.2f in its zfs commands), zfs send %.2f, zfs-fuse %.2f" % (
            counted.total / MIB, counted.rounds, seconds, result["daemon_cpu_s"],
            result["daemon_children_cpu_s"], send_cpu, result["zfs_fuse_cpu_s"]))
    # Replication of this volume stops with it out of the deployment.
    flocker_deploy(lab, workdir, placement(lab, COST_APP, None, []), cost_app())
    return result


# --- output ------------------------------------------------------------------------------

def report(result):
    rows = []
    for r in result["rpo"]:
        rows.append([r["interval_s"], len(r["runs"]), r["median_s"], r["max_s"],
                     r["median_s"] / r["interval_s"] if r["median_s"] is not None else None,
                     r["stated_median_s"], r["stated_max_s"],
                     "yes" if r["within_snapshot_age"] else "NO"])
    print_table(
        "RPO of a take-over (owner powered off at a random moment, flocker-deploy "
        "--down onto its standby)",
        ["interval s", "runs", "RPO median s", "RPO max s", "median / interval",
         "stated median s", "stated max s", "nothing lost before the snapshot"],
        rows)
    c = result["cost"]
    if c is None:
        return
    print_table(
        "replication's cost to the owner, %d MiB written, %.1f MiB replicated in %d "
        "rounds (CPU seconds per GiB replicated)" % (
            c["written_mib"], c["replicated_bytes"] / MIB, c["rounds"]),
        ["process", "CPU s", "CPU s / GiB"],
        [["owner's flocker-node", c["daemon_cpu_s"], c["daemon_cpu_s_per_gib"]],
         ["  the same, net of idle rounds", None, c["daemon_cpu_s_per_gib_net_of_idle"]],
         ["  its zfs commands (reaped children)", c["daemon_children_cpu_s"],
          c["daemon_children_cpu_s_per_gib"]],
         ["  of which zfs send (sampled)", c["zfs_send_cpu_s"], c["zfs_send_cpu_s_per_gib"]],
         ["zfs-fuse (shared by every pool)", c["zfs_fuse_cpu_s"],
          c["zfs_fuse_cpu_s_per_gib"]]])
    say("idle (nothing written): owner's flocker-node %.2f CPU s per minute, its zfs "
        "commands %.2f" % (c["idle"]["daemon_cpu_s_per_min"],
                           c["idle"]["daemon_children_cpu_s_per_min"]))


def parse_intervals(text):
    intervals = [int(x) for x in text.split(",") if x.strip()]
    if not intervals or any(not 1 <= i <= 60 for i in intervals):
        raise argparse.ArgumentTypeError("intervals are whole seconds from 1 to 60")
    return intervals


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs root. Takes about 6 minutes with the defaults.")
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    parser.add_argument("--intervals", type=parse_intervals, default=[2, 5, 10],
                        metavar="S,S,...", help="replication intervals (default 2,5,10)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="take-overs per interval (default 3)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the power-off moments (default 1)")
    parser.add_argument("--cost-mib", type=int, default=256,
                        help="MiB written and replicated for the cost (default 256; "
                        "1024 for 1 GiB)")
    parser.add_argument("--idle-seconds", type=int, default=15,
                        help="seconds of idle replication measured first (default 15)")
    parser.add_argument("--skip-cost", action="store_true", help="measure the RPO only")
    options = parser.parse_args(argv)
    if not 1 <= options.repeats <= 20:
        parser.error("--repeats must be 1 to 20")
    if not 16 <= options.cost_mib <= 1536:
        parser.error("--cost-mib must be 16 to 1536 (the lab's pools hold 4 GiB)")
    return options


def main(argv):
    options = parse_args(argv)
    require_root("bench/failover.py")
    workdir = tempfile.mkdtemp(prefix="flocker-failover-bench-")
    states = None
    try:
        with bench_lab(3, directory=DIRECTORY, prefix=PREFIX) as lab:
            states = States(lab)
            cost = None if options.skip_cost else measure_cost(lab, states, workdir, options)
            rpo = measure_rpo(lab, states, workdir, options)
            states.close()
        result = {"rpo": rpo, "cost": cost, "seed": options.seed, "machine": machine()}
        report(result)
        write_json(options.json, {"failover": result})
        return 0
    finally:
        if states is not None:
            states.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
