"""
A randomized chaos soak with a history checker, Jepsen's way: clients
record every write they saw acknowledged, a nemesis injects faults at
moments drawn from a seed, a scheduler moves the applications around, and
a checker proves the final state against the history.

    sudo .venv/bin/python bench/soak.py [--duration 600] [--seed N]
        [--json PATH] [--keep-lab] [--schedule-only] [--exclude FAULT,...]
        [--tolerate CHECK,...]
    make soak DURATION=600 SEED=N

On a three-node lab of its own (prefix flsk-, /var/lib/flocker-soak-lab,
built and removed afterwards, also after a failure): MariaDB (``db``,
port 3306) and busybox httpd with an append CGI (``web``, port 8080), each
with a volume and a standby replicated every 2 / 3 s.  One writer per
application commits a numbered write at a time through a node address
drawn at random (so through the other nodes' proxies too).  The schedule
(bench/_soak/schedule.py), drawn from random.Random(seed) alone and
printed first, so the same seed replays it: moves of one or both
applications to other nodes with new standbys; faults: flocker-node
SIGKILLed (started again a moment later), dockerd SIGKILLed (started
again), a ``zfs recv`` or ``zfs send`` SIGKILLed, a node's link cut for a
few seconds, a pool filled, zfs-fuse restarted, a node powered off (its
applications then taken over with ``flocker-deploy --down``, the node
powered on again and deployed to as a member again).

Then every node is healed and powered on, one more deploy converges, and
the checker (bench/_soak/checker.py) proves: every acknowledged write is
present exactly once, except writes inside a forced take-over's stated
loss window (reported separately); exactly one writable copy of each
volume, where its application is deployed (every node's ``state``), and
the live copy has the highest epoch; each application runs on its node
only; each application takes a write through every node; no orphan zfs,
ssh or docker process (shim, cgroup, client) and one dockerd per node;
no snapshot retention would have removed; every node's nat rules forward
each port to the node running it, nothing held.  Every flocker-deploy
must end within its own timeouts without a traceback.  A violation prints
the seed, the schedule as run and each node's state, and the run exits 1.

The last two lines:

    soak: faults by kind: fill-pool 1, kill-daemon 3, ...
    soak: SEED seed, N operations, F faults, W acknowledged writes, L lost, longest unavailability S s

Exit status: 0 every check held and nothing was lost outside a stated
window; 1 a violation; 2 the soak could not set up (no verdict).
Logs (every deploy's output, the daemons' logs, report.json) are kept in
--workdir (default /var/tmp/flocker-soak/seed-N-TIME).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

from _common import require_root, say  # noqa: E402
from _soak.run import TOLERABLE, Soak, SoakError  # noqa: E402
from _soak.schedule import FAULTS, NODES, plan  # noqa: E402

PREFIX = "flsk-"
DIRECTORY = "/var/lib/flocker-soak-lab"
WORK_ROOT = "/var/tmp/flocker-soak"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of chaos (default 600; at least 30)")
    parser.add_argument("--seed", type=int, default=1, help="the seed (default 1)")
    parser.add_argument("--json", metavar="PATH",
                        help="also copy the report (report.json) here")
    parser.add_argument("--workdir", help="where logs and the report go")
    parser.add_argument("--keep-lab", action="store_true",
                        help="leave the lab up afterwards, for a post-mortem")
    parser.add_argument("--exclude", metavar="FAULT[,FAULT]", default="",
                        help="leave these fault kinds out (of: %s)" % (", ".join(FAULTS),))
    parser.add_argument("--tolerate", metavar="CHECK[,CHECK]", default="",
                        help="report these checks' violations (known bugs) without "
                        "failing the run (of: %s)" % (", ".join(TOLERABLE),))
    parser.add_argument("--schedule-only", action="store_true",
                        help="print the schedule of this seed and duration, run nothing")
    options = parser.parse_args(argv)
    if options.duration < 30:
        parser.error("--duration must be at least 30 seconds")
    options.exclude = [k.strip() for k in options.exclude.split(",") if k.strip()]
    unknown = sorted(set(options.exclude) - set(FAULTS))
    if unknown:
        parser.error("--exclude: no such fault: %s" % (", ".join(unknown),))
    options.tolerate = [k.strip() for k in options.tolerate.split(",") if k.strip()]
    unknown = sorted(set(options.tolerate) - set(TOLERABLE))
    if unknown:
        parser.error("--tolerate: no such check: %s" % (", ".join(unknown),))
    return options


def _keep_logs(lab, workdir: str) -> None:
    """Each node's daemon and dockerd logs, beside the deploy outputs."""
    for node in lab.nodes:
        for path in (node.daemon_log, node.daemon_output, node.dockerd.log):
            directory = os.path.dirname(path)
            base = os.path.basename(path)
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                if name.startswith(base):
                    shutil.copy(os.path.join(directory, name),
                                os.path.join(workdir, "%s-%s" % (node.name, name)))


def main(argv) -> int:
    options = parse_args(argv)
    schedule = plan(options.seed, options.duration, options.exclude)
    if options.schedule_only:
        try:
            for line in schedule.lines():
                print(line)
        except BrokenPipeError:  # | head
            pass
        return 0
    require_root("bench/soak.py")
    from flocker_async.lab import Lab
    workdir = options.workdir or os.path.join(WORK_ROOT, "seed-%d-%s" % (
        options.seed, time.strftime("%Y%m%dT%H%M%S")))
    os.makedirs(workdir, exist_ok=True)
    say("soak: seed %d, %.0f s; logs in %s" % (options.seed, options.duration, workdir))
    lab = Lab(directory=DIRECTORY, prefix=PREFIX,
              progress=lambda line: say("  lab: " + line))

    def terminated(signum, frame):
        raise KeyboardInterrupt("signal %d" % (signum,))
    signal.signal(signal.SIGTERM, terminated)
    started = time.monotonic()
    soak = None
    try:
        lab.down()  # what an interrupted run left
        lab.up(nodes=len(NODES))
        say("lab up in %.0f s" % (time.monotonic() - started,))
        soak = Soak(lab, schedule, workdir, say, options.tolerate)
        try:
            status = soak.run()
        except SoakError as e:
            say("soak: could not set up: %s" % (e,))
            return 2
        finally:
            soak.stop.set()
            for writer in soak.writers:
                writer.stop()
        if options.json:
            shutil.copy(os.path.join(workdir, "report.json"), options.json)
        return status
    finally:
        try:
            _keep_logs(lab, workdir)
        except OSError as e:
            say("could not keep the daemons' logs: %s" % (e,))
        if options.keep_lab:
            say("the lab is left up (--keep-lab): FLOCKER_IDENTITY=%s FLOCKER_KNOWN_HOSTS=%s"
                % (lab.identity, lab.known_hosts))
        else:
            lab.down()
        say("soak took %.0f s in all" % (time.monotonic() - started,))
        for line in soak.summary if soak is not None else []:
            say(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
