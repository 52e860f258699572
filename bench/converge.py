"""
Convergence time against cluster size: one deploy that starts one small
application on every node of labs of 1, 2, 4 and 8 nodes.

    sudo .venv/bin/python bench/converge.py [--json PATH] [--sizes 1,2,4,8]

One lab (prefix flabb-, /var/lib/flocker-bench-lab) is grown from 1 node
to 8.  For each size N, every application is first removed (a deploy of
empty nodes), then one deploy puts application conv-N-i (flocker-lab/
busybox, httpd on port 80 published as 8100+i, no volume) on node i, so
each node starts one container, waits until it listens, and sets its routes
for all N applications.  The time is the deploy library's (hold every
node, gather states, apply everywhere, wait for every node's result), as
flocker-deploy runs it, without the child process's start-up; the best of
--rounds deploys per size is kept.

JSON: {"converge": {"1": s, "2": s, "4": s, "8": s}}.  Target: 8 nodes
within 1.5 x of 1 node.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    IMAGE, bench_lab, deploy, first, machine, print_table, require_root, say,
    write_configuration, write_json,
)

BASE_PORT = 8100


last_events = {}
phases = {}


def breakdown(events):
    """Where a deploy's time went: ours before the containers start (lease,
    state, apply, routes), docker's (start until the port listens, the
    slowest node), ours after (opening the ports, the result)."""
    t0 = first(events, action="bench-deploy-start")["t"]
    end = first(events, action="bench-deploy-end")["t"]
    starts = {e["application"]: e["t"] for e in events if e.get("action") == "start"}
    listening = {e["application"]: e["t"] for e in events
                 if e.get("action") == "listening"}
    return {"until_last_start_s": round(max(starts.values()) - t0, 3),
            "slowest_start_to_listening_s": round(max(
                listening[a] - starts[a] for a in starts if a in listening), 3),
            "after_last_listening_s": round(end - max(listening.values()), 3)}


def converge(lab, workdir, size, rounds):
    nodes = lab.nodes[:size]
    apps = {"conv-%d-%d" % (size, i): {
        "image": IMAGE, "ports": [{"internal": 80, "external": BASE_PORT + i}]}
        for i in range(1, size + 1)}
    wanted = write_configuration(
        workdir, "converge-%d" % (size,),
        {n.address: ["conv-%d-%d" % (size, i)] for i, n in enumerate(nodes, 1)}, apps)
    empty = write_configuration(workdir, "empty-%d" % (size,),
                                {n.address: [] for n in lab.nodes}, {})
    times = []
    for number in range(1, rounds + 1):
        deploy(lab, *empty)
        d = deploy(lab, *wanted)
        starts = sum(1 for e in d.events if e.get("action") == "start")
        if starts != size:
            raise RuntimeError("expected %d containers started, saw %d"
                               % (size, starts))
        times.append(d.seconds)
        last_events[size] = d.events
        phases.setdefault(size, []).append(breakdown(d.events))
        say("  %d nodes, round %d: %.2f s" % (size, number, d.seconds))
    deploy(lab, *empty)
    return min(times), times


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs root. Takes about 3 minutes with the default sizes.")
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    parser.add_argument("--events", metavar="PATH",
                        help="write each size's last deploy's events here")
    parser.add_argument("--sizes", default="1,2,4,8",
                        help="lab sizes, ascending (default 1,2,4,8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="deploys per size; the best counts (default 2)")
    options = parser.parse_args(argv)
    try:
        options.sizes = [int(s) for s in options.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes numbers separated by commas")
    if options.sizes != sorted(options.sizes) or not all(
            1 <= s <= 16 for s in options.sizes):
        parser.error("--sizes must ascend, each 1 to 16")
    if not 1 <= options.rounds <= 5:
        parser.error("--rounds must be 1 to 5")
    return options


def main(argv):
    options = parse_args(argv)
    require_root("bench/converge.py")
    workdir = tempfile.mkdtemp(prefix="flocker-converge-bench-")
    results, all_times = {}, {}
    try:
        with bench_lab(options.sizes[0]) as lab:
            for size in options.sizes:
                if len(lab.nodes) != size:
                    lab.up(nodes=size)
                say("converging %d node%s" % (size, "" if size == 1 else "s"))
                results[str(size)], all_times[str(size)] = converge(
                    lab, workdir, size, options.rounds)
        one = results.get("1")
        print_table(
            "convergence: one deploy starting one application per node "
            "(best of %d); target: 8 nodes <= 1.5 x 1 node" % (options.rounds,),
            ["nodes", "seconds", "x 1 node", "rounds"],
            [[int(k), v, v / one if one else None,
              " ".join("%.2f" % t for t in all_times[k])]
             for k, v in results.items()])
        if options.events:
            write_json(options.events, {str(k): v for k, v in last_events.items()})
        best = {str(k): min(v, key=lambda b: sum(b.values())) for k, v in phases.items()}
        print_table(
            "where the time went (the fastest round): ours until the last "
            "container start, docker's start -> listening (slowest node), ours after",
            ["nodes", "until start s", "docker start s", "after s"],
            [[int(k), b["until_last_start_s"], b["slowest_start_to_listening_s"],
              b["after_last_listening_s"]] for k, b in best.items()])
        write_json(options.json, {"converge": {k: round(v, 3) for k, v in results.items()},
                                  "converge_breakdown": best,
                                  "converge_rounds": all_times, "machine": machine()})
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
