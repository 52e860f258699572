"""
Volume transfer between two lab nodes: raw ``zfs send | zfs recv``, the
same through OpenSSH, and our push between two flocker-node daemons over
conch, side by side in one run on the same two zfs-fuse pools.

    sudo .venv/bin/python bench/transfer.py [--size-mib 1024] [--json PATH]

A two-node lab (prefix flabb-, /var/lib/flocker-bench-lab) is built; an
application with a volume is deployed on n1 and N MiB of random data
written into the volume (dd into its mountpoint).  Then, from a snapshot
of that volume:

1. raw: ``zfs send flabb-n1/... | zfs recv -u flabb-n2/raw-copy``;
2. OpenSSH: the same with ``ssh root@127.0.0.1 zfs recv ...`` in the
   middle, through a private sshd on loopback (temporary config and keys);
3. ours: the application is moved to n2 with the deploy library (what
   flocker-deploy runs); the bulk push is timed from the source's "push"
   event to its "transferred" event (phase push), which carries the bytes
   sent, while both daemons' RSS (VmRSS) is sampled every 50 ms.

With --rounds 2 (the default) the application then moves back, n2 -> n1,
after n1's replica was destroyed, so that push is full too; raw runs again
after each of ours, and the best round of each is compared (the machine is
shared and noisy).  CPU seconds of both daemons and of zfs-fuse during the
raw pipe and during our push are reported too.  Every rate divides the same byte count (the send
stream's size as our push reports it) by the seconds taken; MB is 10^6
bytes.  JSON: {"transfer": {"raw_mbps", "openssh_mbps", "ours_mbps",
"rss_growth_mib", ...}}.

Profiling the daemons during the push (what found the costs fixed in
flocker_async/ssh and flocker_async/volume/_zfs.py):

    .venv/bin/pip install py-spy       # not a project dependency
    sudo .venv/bin/python bench/transfer.py --profile /tmp/transfer-prof
    # runs `py-spy record --idle --rate 200 --format speedscope -p PID
    #        -o /tmp/transfer-prof/<node>.json` on both daemons during the push
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    MB, IMAGE, RSSSampler, bench_lab, cpu_seconds, daemon_pid, deploy, first,
    machine, pids_named,
    print_table, require_root, say, write_configuration, write_json,
)

APP = "bench-volume"


def zfs() -> str:
    return shutil.which("zfs") or "/sbin/zfs"


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def destroy_dataset(dataset: str) -> None:
    """zfs-fuse may call a just-received dataset busy for a moment."""
    for attempt in range(20):
        result = subprocess.run([zfs(), "destroy", "-r", "-f", dataset],
                                capture_output=True)
        if result.returncode == 0 or b"does not exist" in result.stderr:
            return
        time.sleep(0.5)
    raise RuntimeError("cannot destroy %s: %s" % (
        dataset, result.stderr.decode().strip()))


class CPU:
    """CPU seconds used by the named processes between ``start`` and ``stop``."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.used = {}

    def _now(self):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["children"] = children.ru_utime + children.ru_stime
        return now

    def start(self):
        self._start = self._now()

    def stop(self):
        end = self._now()
        self.used = {k: round(end[k] - self._start[k], 2) for k in end}
        return self.used


def timed_pipeline(send_argv, recv_argv, cpu=None) -> float:
    """``send | recv`` without a shell; seconds taken."""
    os.sync()  # no write-back of earlier work during the measurement
    if cpu is not None:
        cpu.start()
    started = time.monotonic()
    send = subprocess.Popen(send_argv, stdout=subprocess.PIPE)
    recv = subprocess.Popen(recv_argv, stdin=send.stdout,
                            stdout=subprocess.DEVNULL)
    send.stdout.close()
    recv_status = recv.wait()
    send_status = send.wait()
    seconds = time.monotonic() - started
    if cpu is not None:
        cpu.stop()
    if recv_status or send_status:
        raise RuntimeError("%s | %s failed (%s, %s)" % (
            " ".join(send_argv), " ".join(recv_argv), send_status, recv_status))
    return seconds


def fill(path: str, mib: int) -> float:
    started = time.monotonic()
    run(["dd", "if=/dev/urandom", "of=" + path, "bs=1M", "count=%d" % (mib,),
         "iflag=fullblock", "status=none"])
    os.sync()
    return time.monotonic() - started


def start_sshd(workdir: str):
    """A private sshd on 127.0.0.1 and the argv prefix that reaches it."""
    from ssh_stream import ssh_argv, start_sshd as start
    from flocker_async import ssh
    host_key = ssh.load_or_create_key(os.path.join(workdir, "host_key"))
    ssh.load_or_create_key(os.path.join(workdir, "client_key"))
    process, port = start(workdir)
    if process is None:
        raise RuntimeError("could not start sshd (is openssh-server installed?)")
    ssh.add_known_host(os.path.join(workdir, "known_hosts"), "127.0.0.1", port,
                       host_key)
    return process, (lambda command: ssh_argv(workdir, port, command))


def start_profilers(lab, directory):
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(py_spy, os.X_OK):
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    os.makedirs(directory, exist_ok=True)
    profilers = []
    for node in lab.nodes[:2]:
        profilers.append(subprocess.Popen(
            [py_spy, "record", "--idle", "--rate", "200", "--format", "speedscope",
             "-p", str(daemon_pid(lab, node.name)),
             "-o", os.path.join(directory, node.name + ".json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return profilers


def stop_profilers(profilers):
    import signal
    for p in profilers:
        p.send_signal(signal.SIGINT)
    for p in profilers:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def push_round(lab, options, configuration, source, target, cpu_pids, pids,
               profile):
    """Move the application source -> target; the bulk push's figures."""
    say("ours: moving %s from %s to %s (flocker-node push over conch)" % (
        APP, source.name, target.name))
    os.sync()
    cpu = CPU(cpu_pids)
    sampler = RSSSampler(pids)

    def on_event(event):
        if event.get("action") == "push" and event.get("application") == APP:
            cpu.start()
        if event.get("action") == "transferred" and event.get("phase") == "push":
            cpu.stop()
            sampler.stop()

    profilers = (start_profilers(lab, options.profile)
                 if options.profile and profile else [])
    try:
        with sampler:
            move = deploy(lab, *configuration, on_event=on_event)
    finally:
        stop_profilers(profilers)
    events = move.events
    push = first(events, action="push", application=APP)
    done = first(events, action="transferred", application=APP, phase="push")
    final = first(events, action="transferred", application=APP, phase="final-push")
    if push is None or done is None or push.get("incremental"):
        raise RuntimeError("the move had no full bulk push: %s" % (events,))
    seconds = done["t"] - push["t"]
    say("  bulk push %d bytes in %.2f s; final increment %s bytes; "
        "whole deploy %.2f s; CPU seconds during the push %s" % (
            done["bytes"], seconds, final and final["bytes"], move.seconds, cpu.used))
    names = {pid: "n%d" % (i,) for i, pid in enumerate(pids, 1)}
    return {"bytes": done["bytes"], "seconds": seconds, "cpu": cpu.used,
            "growth": {names[p]: g for p, g in sampler.growth().items()}}


def measure(lab, options, workdir):
    n1, n2 = lab.nodes[:2]
    volume_app = {APP: {"image": IMAGE, "volume": {"mountpoint": "/data"}}}
    on_n1 = write_configuration(workdir, "on-n1", {n1.address: [APP], n2.address: []},
                                volume_app)
    on_n2 = write_configuration(workdir, "on-n2", {n1.address: [], n2.address: [APP]},
                                volume_app)
    say("deploying %s with a volume on n1" % (APP,))
    deploy(lab, *on_n1)
    dataset = "%s/%s" % (n1.pool, APP)
    mountpoint = os.path.join(n1.mount_root, APP)
    say("writing %d MiB of random data into %s" % (options.size_mib, mountpoint))
    say("  %.1f s" % (fill(os.path.join(mountpoint, "data.bin"), options.size_mib),))

    zfs_fuse = pids_named("zfs-fuse")
    pids = [daemon_pid(lab, n.name) for n in (n1, n2)]
    cpu_pids = {"n1 daemon": pids[0], "n2 daemon": pids[1]}
    if len(zfs_fuse) == 1:
        cpu_pids["zfs-fuse"] = zfs_fuse[0]
    raw_cpu = CPU(cpu_pids)
    run([zfs(), "snapshot", dataset + "@bench-raw"])
    say("raw zfs send | zfs recv, n1 -> n2")
    raw = [timed_pipeline([zfs(), "send", dataset + "@bench-raw"],
                          [zfs(), "recv", "-u", n2.pool + "/raw-copy"], raw_cpu)]
    destroy_dataset(n2.pool + "/raw-copy")
    say("  %.2f s, CPU seconds %s" % (raw[0], raw_cpu.used))

    say("zfs send | ssh 127.0.0.1 zfs recv (OpenSSH)")
    sshd, ssh_to = start_sshd(workdir)
    try:
        openssh = timed_pipeline([zfs(), "send", dataset + "@bench-raw"],
                                 ssh_to([zfs(), "recv", "-u", n2.pool + "/ssh-copy"]))
    finally:
        sshd.terminate()
        sshd.wait()
    destroy_dataset(n2.pool + "/ssh-copy")
    run([zfs(), "destroy", dataset + "@bench-raw"])
    say("  %.2f s" % (openssh,))

    pushes = []
    rounds = [(on_n2, n1, n2), (on_n1, n2, n1)][:options.rounds]
    for number, (configuration, source, target) in enumerate(rounds, 1):
        if number > 1:
            # Throw the target's old replica away, so this push is full too.
            destroy_dataset("%s/%s" % (target.pool, APP))
        pushes.append(push_round(lab, options, configuration, source, target,
                                 cpu_pids, pids, number == 1))
        say("raw again, %s -> %s" % (source.name, target.name))
        source_dataset = "%s/%s" % (source.pool, APP)
        replica_snapshot = run([zfs(), "list", "-H", "-t", "snapshot", "-o", "name",
                                "-s", "createtxg", "-d", "1", source_dataset]
                               ).stdout.decode().split()[-1]
        raw.append(timed_pipeline([zfs(), "send", replica_snapshot],
                                  [zfs(), "recv", "-u", target.pool + "/raw-copy"]))
        destroy_dataset(target.pool + "/raw-copy")
        say("  %.2f s" % (raw[-1],))
    stream_bytes = pushes[0]["bytes"]
    best = min(pushes, key=lambda p: p["seconds"])
    growth = {}
    for push in pushes:
        for name, value in push["growth"].items():
            growth[name] = max(growth.get(name, 0.0), value)

    def mbps(seconds):
        return stream_bytes / seconds / MB
    result = {
        "raw_mbps": round(mbps(min(raw)), 1),
        "raw_rounds_mbps": [round(mbps(s), 1) for s in raw],
        "openssh_mbps": round(mbps(openssh), 1),
        "ours_mbps": round(mbps(best["seconds"]), 1),
        "ours_rounds_mbps": [round(mbps(p["seconds"]), 1) for p in pushes],
        "rss_growth_mib": round(max(growth.values()), 1),
        "rss_growth_by_node_mib": {k: round(v, 1) for k, v in growth.items()},
        "cpu_seconds": {"raw": raw_cpu.used, "ours": best["cpu"]},
        "size_mib": options.size_mib,
        "stream_bytes": stream_bytes,
        "machine": machine(),
    }
    return result


def report(result):
    raw = result["raw_mbps"]
    print_table(
        "volume transfer, %d MiB of random data, n1 -> n2 (zfs-fuse pools); "
        "MB = 10^6 bytes" % (result["size_mib"],),
        ["path", "MB/s", "x raw", "target"],
        [["raw zfs send | zfs recv (best of %d)" % len(result["raw_rounds_mbps"]),
          raw, 1.0, ""],
         ["zfs send | OpenSSH | zfs recv", result["openssh_mbps"],
          result["openssh_mbps"] / raw, ""],
         ["ours: flocker-node push over conch (best of %d)"
          % len(result["ours_rounds_mbps"]), result["ours_mbps"],
          result["ours_mbps"] / raw, ">= 0.90"]])
    say("daemon RSS growth during the push: %.1f MiB (%s); target < 64 MiB" % (
        result["rss_growth_mib"], ", ".join(
            "%s +%.1f" % kv for kv in sorted(result["rss_growth_by_node_mib"].items()))))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs root. Takes about a minute plus 26 s per GiB written.")
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="MiB of random data in the volume (default 1024)")
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                        help="full pushes of ours: n1 -> n2, then back (default 2)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record both daemons with py-spy during the move")
    options = parser.parse_args(argv)
    if options.size_mib < 1 or options.size_mib > 2048:
        parser.error("--size-mib must be 1 to 2048 (the lab's pools hold 4 GiB)")
    return options


def main(argv):
    options = parse_args(argv)
    require_root("bench/transfer.py")
    workdir = tempfile.mkdtemp(prefix="flocker-transfer-bench-")
    try:
        with bench_lab(2) as lab:
            result = measure(lab, options, workdir)
        report(result)
        write_json(options.json, {"transfer": result})
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
