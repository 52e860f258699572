"""
flocker-lab: a flocker_async cluster on this machine, for the demo, the
acceptance tests and the benchmarks.

    flocker-lab up [--nodes N] [--no-daemons]
    flocker-lab nodes | env | status | down
    flocker-lab exec NODE -- CMD...
    flocker-lab kill-daemon NODE | start-daemon NODE
    flocker-lab power-off NODE | power-on NODE | partition NODE | heal NODE
    flocker-lab kill-dockerd NODE | start-dockerd NODE | restart-zfs
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable, List, Optional, TextIO

from twisted.python import usage

from .. import __version__
from ..lab import (
    LAB_DIR, MAX_NODES, DaemonStartError, Lab, LabError, export_lines,
    parse_node_name,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 64  # EX_USAGE from sysexits.h


class _Options(usage.Options):
    def opt_version(self):
        print("flocker-lab (flocker_async) %s" % (__version__,))
        sys.exit(EXIT_OK)

    def getSynopsis(self):
        # Each command's synopsis is complete; usage.Options would prefix
        # the parent's.
        return self.synopsis


class _NodeOptions(_Options):
    def parseArgs(self, node):
        try:
            parse_node_name(node)
        except LabError as e:
            raise usage.UsageError(str(e))
        self["node"] = node


class UpOptions(_Options):
    synopsis = "Usage: flocker-lab up [--nodes N] [--no-daemons]"
    longdesc = (
        "Build the lab, or check and mend a running or half-built one: a "
        "switch namespace with a bridge, one network namespace per node "
        "(n1, n2, ...) with its own address on a lab /24 that overlaps no "
        "route of this host, a lab address for this host (veth flab-host), "
        "per node a dockerd, a zfs-fuse pool flab-NODE, keys and node.yml, "
        "the images flocker-lab/busybox and flocker-lab/mariadb (built "
        "offline the first time and cached in /var/cache/flocker-async), "
        "and a flocker-node daemon.  Everything lives in %s." % (LAB_DIR,))
    optFlags = [
        ["no-daemons", None, "Do not start the flocker-node daemons."],
    ]
    optParameters = [
        ["nodes", "n", None,
         "How many nodes (1-%d; default: as many as the lab has, else 2)."
         % (MAX_NODES,)],
    ]

    def postOptions(self):
        if self["nodes"] is not None:
            try:
                count = int(self["nodes"])
            except ValueError:
                count = 0
            if not 1 <= count <= MAX_NODES:
                raise usage.UsageError("--nodes must be a number from 1 to %d, "
                                       "not %r" % (MAX_NODES, self["nodes"]))
            self["nodes"] = count


class DownOptions(_Options):
    synopsis = "Usage: flocker-lab down"
    longdesc = ("Remove everything the lab made: daemons, containers, "
                "dockerds, pools and their files, mounts, namespaces, the "
                "host veth and %s; the image cache stays.  Works after a "
                "crash or a half-finished up, and when there is no lab." % (LAB_DIR,))


class NodesOptions(_Options):
    synopsis = "Usage: flocker-lab nodes"
    longdesc = "Print one line per node: NAME ADDRESS."


class EnvOptions(_Options):
    synopsis = "Usage: flocker-lab env"
    longdesc = ("Print export lines that point flocker-deploy at the lab "
                "(FLOCKER_IDENTITY, FLOCKER_KNOWN_HOSTS): "
                'eval "$(flocker-lab env)"')


class StatusOptions(_Options):
    synopsis = "Usage: flocker-lab status"
    longdesc = ("Per node: address, power (on, or off after power-off), "
                "link (down after power-off or partition), namespace, "
                "dockerd, pool health and whether its flocker-node is up "
                "(asked from inside the node while its link is down).  Exit "
                "status 1 if anything is down, a powered-off or partitioned "
                "node included.")


class ExecOptions(_Options):
    synopsis = "Usage: flocker-lab exec NODE -- COMMAND [ARGUMENTS...]"
    longdesc = ("Run COMMAND in NODE's network namespace with DOCKER_HOST "
                "set to NODE's dockerd, as 'ssh root@NODE COMMAND' would: "
                "flocker-lab exec n1 -- docker ps; flocker-lab exec n1 -- "
                "iptables -t nat -S.  The exit status is COMMAND's.  On a "
                "powered-off node COMMAND still runs in its namespace (to "
                "read its pool, say), where nothing else runs: docker "
                "commands fail there.")

    def parseArgs(self, node, *command):
        try:
            parse_node_name(node)
        except LabError as e:
            raise usage.UsageError(str(e))
        command = list(command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            raise usage.UsageError("no command given; e.g. flocker-lab exec "
                                   "%s -- docker ps" % (node,))
        self["node"] = node
        self["command"] = command


class KillDaemonOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab kill-daemon NODE"
    longdesc = "Kill NODE's flocker-node daemon with SIGKILL, as a crash would."


class StartDaemonOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab start-daemon NODE"
    longdesc = ("Start NODE's flocker-node daemon (if it is not running) and "
                "wait until its SSH port answers.")


class PowerOffOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab power-off NODE"
    longdesc = ("Pull NODE's plug: its link goes down (nothing reaches its "
                "address, and it sends nothing), and every process of it is "
                "SIGKILLed at one instant, without a chance to clean up: "
                "flocker-node and what it started (zfs send/recv), dockerd, "
                "containerd and its shims, the containers' processes, "
                "anything else in its namespace.  Then what a reboot clears "
                "goes: its iptables (nat, filter, raw, mangle), conntrack, "
                "docker's mounts and runtime state.  Its pool stays imported "
                "with its data, and docker keeps the containers' last state, "
                "as after a crash.  Recorded in the lab state: 'status' shows "
                "it, 'up' leaves the node off, kill-daemon and start-daemon "
                "refuse it; exec still runs in its namespace.  A powered-off "
                "node is reported and left so (exit status 0).")


class PowerOnOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab power-on NODE"
    longdesc = ("Boot NODE again: its link up (unless it is partitioned), "
                "dockerd started (containers come back only per their "
                "restart policy, as after a reboot), flocker-node started; "
                "waits until its SSH port answers and prints what it did.  "
                "On a node that is on, it starts whatever of it is not "
                "running.")


class PartitionOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab partition NODE"
    longdesc = ("Take NODE's link down and leave everything on it running "
                "(flocker-node, dockerd, containers): neither this host nor "
                "any other node reaches its address, and it reaches none of "
                "them, while inside NODE (flocker-lab exec NODE -- ...) its "
                "own address, its containers and 127.0.0.1 still answer.  "
                "'heal NODE' ends it.  Recorded in the lab state: 'status' "
                "shows it and 'up' leaves the link down.")


class HealOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab heal NODE"
    longdesc = ("End NODE's partition: its link up again, both ways.  A "
                "powered-off node's link stays down until power-on.")


class KillDockerdOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab kill-dockerd NODE"
    longdesc = ("SIGKILL NODE's dockerd, as a crash would: its containerd "
                "goes with it; the containers keep running until "
                "start-dockerd.")


class StartDockerdOptions(_NodeOptions):
    synopsis = "Usage: flocker-lab start-dockerd NODE"
    longdesc = ("Start NODE's dockerd unless it runs, as systemd would after "
                "a crash: what the old one left (containers, shims, mounts) "
                "goes first; flocker-node and what it started keep running.")


class RestartZFSOptions(_Options):
    synopsis = "Usage: flocker-lab restart-zfs"
    longdesc = ("Restart this machine's zfs-fuse now (it serves every pool "
                "on the machine): SIGKILL it, unmount its dead mounts, start "
                "it, mount every file system again.  File systems in use "
                "meanwhile fail; 'up' does this only when it stopped "
                "answering.")


class LabOptions(_Options):
    synopsis = "Usage: flocker-lab COMMAND [options]"
    longdesc = ("A flocker_async cluster on this machine: network namespaces "
                "as nodes, each with its own dockerd, ZFS pool and "
                "flocker-node.  Run as root.  'flocker-lab COMMAND --help' "
                "describes each command.")
    subCommands = [
        ["up", None, UpOptions, "Build or mend the lab."],
        ["down", None, DownOptions, "Remove the lab."],
        ["nodes", None, NodesOptions, "List the nodes: NAME ADDRESS."],
        ["env", None, EnvOptions, "Print export lines for flocker-deploy."],
        ["status", None, StatusOptions, "Show what is up on each node."],
        ["exec", None, ExecOptions, "Run a command on a node."],
        ["kill-daemon", None, KillDaemonOptions, "SIGKILL a node's flocker-node."],
        ["start-daemon", None, StartDaemonOptions, "Start a node's flocker-node."],
        ["power-off", None, PowerOffOptions,
         "Pull a node's plug: every process SIGKILLed, link down."],
        ["power-on", None, PowerOnOptions, "Boot a powered-off node again."],
        ["partition", None, PartitionOptions,
         "Take a node's link down; everything on it keeps running."],
        ["heal", None, HealOptions, "Bring a partitioned node's link up again."],
        ["kill-dockerd", None, KillDockerdOptions, "SIGKILL a node's dockerd."],
        ["start-dockerd", None, StartDockerdOptions,
         "Start a node's dockerd after a crash."],
        ["restart-zfs", None, RestartZFSOptions,
         "Restart the machine's zfs-fuse (every pool's file systems)."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is needed")


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def run_command(options: LabOptions, lab: Lab, out: TextIO, err: TextIO) -> int:
    command, sub = options.subCommand, options.subOptions
    if command == "up":
        try:
            lab.up(nodes=sub["nodes"], daemons=not sub["no-daemons"])
        except DaemonStartError as e:
            for name, why in sorted(e.failures.items()):
                err.write("flocker-lab: flocker-node on %s did not start: %s\n"
                          % (name, why))
            err.write("flocker-lab: everything else is up; after fixing the "
                      "daemon run 'flocker-lab up' or 'flocker-lab "
                      "start-daemon NODE' (up --no-daemons skips them).\n")
            return EXIT_FAILED
        for node in lab.nodes:
            notes = [note for note, applies in (
                ("powered off", not lab.is_powered_on(node)),
                ("partitioned", lab.is_partitioned(node))) if applies]
            out.write("%s %s%s\n" % (node.name, node.address, " (%s)" % (
                ", ".join(notes),) if notes else ""))
        out.write('run: eval "$(flocker-lab env)"   to use flocker-deploy on the lab\n')
        return EXIT_OK
    if command == "down":
        lab.down()
        out.write("lab removed\n")
        return EXIT_OK
    if command == "nodes":
        if not lab.nodes:
            raise LabError("there is no lab; start one with 'flocker-lab up'")
        for node in lab.nodes:
            out.write("%s %s\n" % (node.name, node.address))
        return EXIT_OK
    if command == "env":
        for line in export_lines(lab.env()):
            out.write(line + "\n")
        return EXIT_OK
    if command == "status":
        statuses = lab.status()
        if not statuses:
            err.write("flocker-lab: there is no lab; start one with "
                      "'flocker-lab up'\n")
            return EXIT_FAILED
        out.write("lab %s, host %s\n" % (lab.subnet, lab.host_address))
        for status in statuses:
            out.write(status.line() + "\n")
        return EXIT_OK if all(s.healthy for s in statuses) else EXIT_FAILED
    if command == "exec":
        argv, env = lab.exec_argv(sub["node"], sub["command"])
        if not lab.is_powered_on(sub["node"]):
            err.write("flocker-lab: note: %s is powered off; the command runs "
                      "in its namespace, where nothing else runs\n" % (sub["node"],))
        try:
            process = subprocess.Popen(argv, env=env)
        except OSError as e:
            raise LabError("cannot run %s: %s" % (argv[0], e))
        while True:
            try:
                exit_status = process.wait()
                break
            except KeyboardInterrupt:
                continue  # the command got the SIGINT too; wait for it
        return exit_status if exit_status >= 0 else 128 - exit_status
    if command == "kill-daemon":
        if lab.kill_daemon(sub["node"]):
            out.write("killed flocker-node on %s\n" % (sub["node"],))
        else:
            out.write("flocker-node on %s was not running\n" % (sub["node"],))
        return EXIT_OK
    if command == "start-daemon":
        try:
            lab.start_daemon(sub["node"])
        except DaemonStartError as e:
            _daemon_failures(e, err)
            return EXIT_FAILED
        out.write("flocker-node on %s is up\n" % (sub["node"],))
        return EXIT_OK
    if command == "kill-dockerd":
        if lab.kill_dockerd(sub["node"]):
            out.write("killed dockerd on %s\n" % (sub["node"],))
        else:
            out.write("dockerd on %s was not running\n" % (sub["node"],))
        return EXIT_OK
    if command == "start-dockerd":
        if lab.start_dockerd(sub["node"]):
            out.write("started dockerd on %s\n" % (sub["node"],))
        else:
            out.write("dockerd on %s was running\n" % (sub["node"],))
        return EXIT_OK
    if command == "restart-zfs":
        lab.restart_zfs()
        out.write("zfs-fuse restarted\n")
        return EXIT_OK
    if command in _FAILURES:
        node = sub["node"]
        method, done_line, unchanged_line = _FAILURES[command]
        try:
            done = getattr(lab, method)(node)
        except DaemonStartError as e:
            _daemon_failures(e, err)
            return EXIT_FAILED
        for line in done:
            out.write("%s: %s\n" % (node, line))
        out.write((done_line if done else unchanged_line) % (node,) + "\n")
        return EXIT_OK
    raise AssertionError(command)


# command: (Lab method, last line after a change, the line when nothing changed)
_FAILURES = {
    "power-off": ("power_off", "%s is powered off", "%s was already powered off"),
    "power-on": ("power_on", "%s is powered on", "%s was already powered on"),
    "partition": ("partition", "%s is partitioned", "%s was already partitioned"),
    "heal": ("heal", "%s is healed", "%s was not partitioned"),
}


def _daemon_failures(error: DaemonStartError, err: TextIO) -> None:
    for name, why in sorted(error.failures.items()):
        err.write("flocker-lab: flocker-node on %s did not start: %s\n"
                  % (name, why))


def _printer(out: TextIO) -> Callable[[str], None]:
    def progress(line: str) -> None:
        out.write(line + "\n")
        out.flush()
    return progress


def main(argv: Optional[List[str]] = None, out: Optional[TextIO] = None,
         err: Optional[TextIO] = None, lab: Optional[Lab] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    options = LabOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # --help | head
        return EXIT_OK
    except usage.UsageError as e:
        command = getattr(options, "subCommand", None)
        err.write("flocker-lab%s: %s\n" % (" " + command if command else "", e))
        err.write("Run 'flocker-lab%s --help' for usage.\n"
                  % (" " + command if command else "",))
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK
    if lab is None:
        lab = Lab(progress=_printer(out))
    try:
        return run_command(options, lab, out, err)
    except LabError as e:
        err.write("flocker-lab: %s\n" % (e,))
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write("flocker-lab: interrupted; 'flocker-lab up' resumes, "
                  "'flocker-lab down' removes what was made\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except OSError as e:
        err.write("flocker-lab: %s\n" % (e,))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
