"""
flocker-deploy: put applications on the nodes a deployment file names.

    flocker-deploy [options] DEPLOYMENT_FILE APPLICATION_FILE
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Dict, List, Optional, TextIO

from twisted.python import usage

from .. import __version__
from ..config import ConfigurationError, Problem, load_configuration, normalise_node_address

EXIT_OK = 0
EXIT_CONFIGURATION = 1
EXIT_NODE_FAILED = 2
EXIT_USAGE = 64  # EX_USAGE from sysexits.h


def _default(variable: str, fallback: str) -> str:
    return os.environ.get(variable) or fallback


# C0 and C1 controls, DEL, and the marks and overrides that reorder text.
_CONTROLS = "\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile("[%s]" % (_CONTROLS,))
_UNPRINTABLE_OR_NEWLINE = re.compile("[\n%s]" % (_CONTROLS,))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match) -> str:
    character = match.group()
    code = ord(character)
    return _NAMED.get(character) or (
        "\\x%02x" % (code,) if code < 0x100 else "\\u%04x" % (code,))


def printable(text: str, newlines: bool = True) -> str:
    """
    ``text`` with its control characters shown as escapes (``\\x1b``,
    ``\\r``), so what a node says (events, zfs or registry errors) cannot
    move the cursor, retitle or clear the operator's terminal.  ``\\n``
    stays a line break unless ``newlines`` is false.
    """
    pattern = _UNPRINTABLE if newlines else _UNPRINTABLE_OR_NEWLINE
    return pattern.sub(_escape, text)


def _cause(text: str) -> str:
    """A node's multi-line error, its lines after the first indented under
    the line that names the node."""
    return printable(text).replace("\n", "\n  ")


class DeployOptions(usage.Options):
    synopsis = "Usage: flocker-deploy [options] DEPLOYMENT_FILE APPLICATION_FILE"
    longdesc = (
        "Deploy the applications of APPLICATION_FILE onto the nodes that "
        "DEPLOYMENT_FILE names (Flocker 0.3/0.4 version-1 formats; the "
        "application file may also be in fig/compose form).  Both files are "
        "validated first and every problem is reported as "
        "FILE: KEY.PATH: message; nothing reaches a node unless both are "
        "valid and every node answers.  Then each node's flocker-node daemon "
        "is sent the deployment over SSH, all at once, and progress is shown "
        "per node.  An application moved to another node takes its volume "
        "with it.  With --down, nodes declared dead are left out and their "
        "applications taken over.  Exit status: 0 every node converged, 1 "
        "invalid configuration or local set-up (or a --down node that "
        "answers), 2 a node failed or could not be reached (or a take-over "
        "has no surviving copy), 64 wrong usage.")

    optFlags = [
        ["validate", None,
         "Only check both files and print a summary; contact no node."],
        ["dry-run", None,
         "Contact the nodes and print, per node, the changes a deploy would "
         "make; change nothing."],
        ["version", None, "Print the version and exit."],
    ]
    optParameters = [
        ["identity", "i", None,
         "The operator's private key (default: $FLOCKER_IDENTITY, else "
         "~/.ssh/id_ed25519).  Its public key must be in each node's "
         "operator_keys file."],
        ["known-hosts", None, None,
         "The known_hosts file with the nodes' host keys (default: "
         "$FLOCKER_KNOWN_HOSTS, else ~/.ssh/known_hosts).  An unknown node "
         "key is refused, with its fingerprint and the line to add."],
        ["port", None, None,
         "The nodes' flocker-node SSH port (default: $FLOCKER_PORT, else 4522)."],
        ["timeout", None, "3600",
         "Seconds a node may go silent during a deploy before it counts as "
         "failed."],
        ["down", None, None,
         "NODE[,NODE...]: declare these nodes dead (as the deployment file names "
         "them, or by address).  They are not contacted; every other node is "
         "deployed to as usual, and an application whose volume's owner is down "
         "starts where the deployment file puts it, from the freshest surviving "
         "copy (replicated to its standbys).  Before acting, how much may be "
         "lost is printed per application.  Refused if a node named answers.  "
         "Use it only for a node that is really gone: a partitioned node that "
         "still runs keeps serving whoever reaches it until it returns, and then "
         "yields, keeping what it wrote aside."],
    ]

    def opt_version(self):
        print("flocker-deploy %s" % (__version__,))
        sys.exit(EXIT_OK)

    def parseArgs(self, deployment_file, application_file):
        self["deployment_file"] = deployment_file
        self["application_file"] = application_file

    def postOptions(self):
        if self["validate"] and self["dry-run"]:
            raise usage.UsageError("--validate and --dry-run exclude each other")
        self["identity"] = self["identity"] or _default(
            "FLOCKER_IDENTITY", os.path.expanduser("~/.ssh/id_ed25519"))
        self["known-hosts"] = self["known-hosts"] or _default(
            "FLOCKER_KNOWN_HOSTS", os.path.expanduser("~/.ssh/known_hosts"))
        port = self["port"] or _default("FLOCKER_PORT", "4522")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise usage.UsageError("--port must be a port number from 1 to 65535, "
                                   "got %r" % (port,))
        self["port"] = int(port)
        down = []
        for name in (self["down"] or "").split(","):
            if not name.strip():
                continue
            normal, why = normalise_node_address(name.strip())
            if normal is None:
                raise usage.UsageError("--down: %s" % (why,))
            if normal not in down:
                down.append(normal)
        if self["down"] is not None and not down:
            raise usage.UsageError("--down needs at least one node")
        self["down"] = down
        try:
            self["timeout"] = float(self["timeout"])
        except ValueError:
            raise usage.UsageError("--timeout must be a number of seconds")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def load(options, err: TextIO):
    try:
        return load_configuration(options["deployment_file"],
                                  options["application_file"])
    except ConfigurationError as e:
        for problem in e.problems:
            err.write("%s\n" % (printable(str(problem)),))
        err.write("%s in %s and %s; nothing was deployed.\n" % (
            _plural(len(e.problems), "problem"),
            options["deployment_file"], options["application_file"]))
        return None


def down_problems(options, deployment) -> List[Problem]:
    """What the deployment file asks of nodes --down declares dead."""
    down = set(options["down"])
    source = options["deployment_file"]
    problems = []
    for node in sorted(deployment.nodes, key=lambda n: n.hostname):
        if node.hostname in down and node.applications:
            problems.append(Problem(source, 'nodes["%s"]' % (node.hostname,), (
                "node %s is declared down (--down) but applications %s are placed "
                "on it; put them on a live node" % (node.hostname, ", ".join(
                    sorted(a.name for a in node.applications))))))
    for app, nodes in deployment.standby:
        for i, node in enumerate(nodes):
            if node in down:
                problems.append(Problem(source, "standby.%s[%d]" % (app, i), (
                    "node %s is declared down (--down); it cannot keep a replica"
                    % (node,))))
    return problems


def report(problems, options, err: TextIO) -> int:
    for problem in problems:
        err.write("%s\n" % (printable(str(problem)),))
    err.write("%s in %s and %s; nothing was deployed.\n" % (
        _plural(len(problems), "problem"),
        options["deployment_file"], options["application_file"]))
    return EXIT_CONFIGURATION


def too_large(error, options) -> str:
    """What to tell the operator about a ``RequestTooLarge``."""
    source = {"applications": options["application_file"],
              "deployment": options["deployment_file"]}.get(error.part)
    request = ("the apply request" if error.node is None
               else "the apply request to node %s" % (error.node,))
    text = "%s would be %d bytes, more than the %d bytes a node accepts" % (
        request, error.size, error.limit)
    if source is None:
        return ("flocker-deploy: %s; the nodes' state and keys make %d bytes of it; "
                "nothing was deployed" % (text, error.part_size))
    text = "%s: %s; %s makes %d bytes of it" % (source, text, source, error.part_size)
    if error.largest is not None:
        text += " (the largest, application %s, %d bytes)" % error.largest
    return text + "; nothing was deployed"


def size_checked(options, deployment, err: TextIO) -> bool:
    """False, having said why, if a node would refuse the deployment's apply
    request for its size (checked before any node is contacted)."""
    from .. import deploy as deploy_lib
    try:
        deploy_lib.check_deployment_size(deployment)
    except deploy_lib.RequestTooLarge as e:
        err.write("%s\n" % (printable(too_large(e, options)),))
        return False
    return True


def validate(options, out: TextIO, err: TextIO) -> int:
    deployment = load(options, err)
    if deployment is None:
        return EXIT_CONFIGURATION
    problems = down_problems(options, deployment)
    if problems:
        return report(problems, options, err)
    if not size_checked(options, deployment, err):
        return EXIT_CONFIGURATION
    apps = sorted(app.name for _, app in deployment.applications())
    out.write("valid: %s (%s) on %s (%s)\n" % (
        _plural(len(apps), "application"), ", ".join(apps) or "none",
        _plural(len(deployment.nodes), "node"),
        ", ".join(sorted(n.hostname for n in deployment.nodes)) or "none"))
    for app, nodes in deployment.standby:
        out.write("standby: %s -> %s\n" % (app, ", ".join(nodes)))
    return EXIT_OK


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0
    return "%.1f TiB" % (n,)


def describe(event: dict) -> Optional[str]:
    """One line for a progress event, or None for events not worth a line."""
    action = event.get("action", "")
    app = event.get("application", "")
    if "result" in event:
        if event["result"] == "ok":
            return "converged"
        return "%s: %s" % (event["result"], "; ".join(event.get("errors", [])))
    if action == "transfer":
        return None  # rendered with a rate by the progress display
    if action in ("push", "final-push"):
        return "%s volume %s to %s (%s)" % (
            "pushing" if action == "push" else "final push of", app, event.get("to"),
            "incremental" if event.get("incremental") else "full")
    if action == "transferred":
        return "sent %s of volume %s to %s" % (_size(event.get("bytes", 0)), app,
                                               event.get("to"))
    if action == "route":
        return "%s: %s" % (app, event.get("route"))
    if action == "waiting":
        return "waiting: %s" % (event.get("message"),)
    if action == "line-cut":
        return "skipped a line of this node's output longer than %s" % (
            _size(event.get("limit", 0)),)
    if action == "problem" or action == "warning":
        return "%s: %s" % (app, event.get("message"))
    words = {
        "create-volume": "creating volume", "make-writable": "making writable",
        "pull-image": "checking image for", "start": "starting", "stop": "stopping",
        "listening": "listening:", "wait-handoff": "waiting for the volume of",
        "acquire": "handing over volume", "acquired": "took ownership of volume",
        "handed-over": "handed over volume", "received": "received volume",
        "record-owner": "recorded the new owner of volume",
        "unroute": "removed routes of",
        "take-over": "took over volume",
    }
    if action == "replicated":
        return "replicated volume %s to %s (%s)" % (app, event.get("to"),
                                                    _size(event.get("bytes", 0)))
    if action == "replication-failed":
        return "replicating volume %s to %s failed: %s" % (app, event.get("to"),
                                                           event.get("error"))
    if action == "set-aside":
        return ("set its copy of volume %s aside (it lost ownership; kept read-only "
                "at %s until an operator discards it)" % (app, event.get("mountpoint")))
    return "%s %s" % (words.get(action, action), app)


class Progress:
    """Plain lines (not a terminal) or one live line per node (terminal)."""

    def __init__(self, out: TextIO, nodes: List[str], live: bool, clock=time.monotonic):
        self.out = out
        self.nodes = nodes
        self.live = live
        self.clock = clock
        self.current: Dict[str, str] = {n: "connecting" for n in nodes}
        self.rates: Dict[tuple, tuple] = {}
        self.drawn = False

    def event(self, node: str, event: dict):
        line = describe(event)
        if line is not None:
            # One line per event, so a node cannot draw over another's line.
            line = printable(line, newlines=False)
        if event.get("action") == "transfer":
            key = (node, event.get("application"), event.get("phase"))
            now, done = self.clock(), event.get("bytes", 0)
            previous = self.rates.get(key)
            rate = ""
            if previous and now > previous[0]:
                rate = ", %.1f MB/s" % ((done - previous[1]) / (now - previous[0]) / 1e6,)
            self.rates[key] = (now, done)
            line = printable("sending volume %s to %s: %s%s" % (
                event.get("application"), event.get("to"), _size(done), rate),
                newlines=False)
            if not self.live:
                self.out.write("%s: %s\n" % (node, line))
                self.out.flush()
                return
        if line is None:
            return
        self.current[node] = line
        if self.live:
            self.redraw()
        else:
            self.out.write("%s: %s\n" % (node, line))
            self.out.flush()

    def redraw(self):
        if self.drawn:
            self.out.write("\x1b[%dA" % (len(self.nodes),))
        width = 200
        for node in self.nodes:
            self.out.write("\x1b[2K%s: %s\n" % (node, self.current[node][:width]))
        self.drawn = True
        self.out.flush()


def run_deploy(options, out: TextIO, err: TextIO, dry: bool, reactor=None) -> int:
    deployment = load(options, err)
    if deployment is None:
        return EXIT_CONFIGURATION
    problems = down_problems(options, deployment)
    if problems:
        return report(problems, options, err)
    clashes = sorted(app.name for _, app in deployment.applications()
                     if any(p.external_port == options["port"] for p in app.ports))
    if clashes:
        err.write("%s: applications %s publish external port %d, the port "
                  "flocker-node listens on: every node would forward it away "
                  "from the daemon; choose another external port\n"
                  % (options["application_file"], ", ".join(clashes), options["port"]))
        return EXIT_CONFIGURATION
    if not size_checked(options, deployment, err):
        return EXIT_CONFIGURATION
    from twisted.conch.ssh import keys
    try:
        identity = keys.Key.fromFile(options["identity"])
    except FileNotFoundError:
        err.write("flocker-deploy: no identity key at %s; give one with -i or "
                  "$FLOCKER_IDENTITY\n" % (options["identity"],))
        return EXIT_CONFIGURATION
    except keys.EncryptedKeyError:
        err.write("flocker-deploy: the identity key %s is encrypted; use an "
                  "unencrypted key for flocker-deploy\n" % (options["identity"],))
        return EXIT_CONFIGURATION
    except (OSError, keys.BadKeyError, ValueError) as e:
        err.write("flocker-deploy: cannot read the identity key %s: %s\n"
                  % (options["identity"], e))
        return EXIT_CONFIGURATION
    if not os.path.isfile(options["known-hosts"]):
        err.write("flocker-deploy: no known_hosts file at %s; give one with "
                  "--known-hosts or $FLOCKER_KNOWN_HOSTS\n" % (options["known-hosts"],))
        return EXIT_CONFIGURATION

    from twisted.internet import defer, task
    from .. import deploy as deploy_lib
    from ..ssh import SSHClient

    nodes = sorted(n.hostname for n in deployment.nodes
                   if n.hostname not in options["down"])
    progress = Progress(out, nodes, live=out.isatty())
    outcome = {"status": EXIT_OK}

    def takeover(lines):
        for line in lines:
            out.write("take-over: %s\n" % (printable(line, newlines=False),))
        out.flush()

    async def main(reactor):
        client = SSHClient(reactor, identity, options["known-hosts"],
                           idle_timeout=options["timeout"])
        port = options["port"]
        try:
            down = {}
            if options["down"]:
                down = await deploy_lib.resolve_down(reactor, options["down"])
                await deploy_lib.check_down(reactor, client, down, port)
            if dry:
                live = deploy_lib.live_part(deployment, down)
                infos = await deploy_lib.gather(reactor, client, live, port)
                if down:
                    takeover(deploy_lib.takeover_report(deployment, infos, down))
                for name, change in deploy_lib.dry_run(deployment, infos, down).items():
                    steps = _steps(change)
                    out.write("%s (%s):\n" % (name, infos[name].address))
                    for step in steps:
                        out.write("  %s\n" % (printable(step, newlines=False),))
                return
            await deploy_lib.deploy(reactor, client, deployment, port,
                                    progress.event, down=down, on_takeover=takeover)
        except deploy_lib.DownNodeAnswers as e:
            for node in e.nodes:
                err.write("flocker-deploy: node %s answers: it is not down; nothing "
                          "was changed (deploy without --down for it)\n"
                          % (printable(node, newlines=False),))
            outcome["status"] = EXIT_CONFIGURATION
        except deploy_lib.TakeOverRefused as e:
            for line in e.lines:
                err.write("flocker-deploy: %s\n" % (printable(line, newlines=False),))
            outcome["status"] = EXIT_NODE_FAILED
        except deploy_lib.RequestTooLarge as e:
            err.write("%s\n" % (printable(too_large(e, options)),))
            outcome["status"] = EXIT_CONFIGURATION
        except deploy_lib.DeployFailed as e:
            for failure in e.failures:
                err.write("flocker-deploy: node %s failed: %s\n"
                          % (printable(failure.node), _cause(failure.cause)))
            outcome["status"] = EXIT_NODE_FAILED
        except Exception as e:
            err.write("flocker-deploy: deploy failed: %s: %s\n"
                      % (type(e).__name__, _cause(str(e))))
            outcome["status"] = EXIT_NODE_FAILED

    def run(reactor):
        return defer.Deferred.fromCoroutine(main(reactor))

    try:
        if reactor is None:
            task.react(lambda r: run(r))
        else:
            return run(reactor)
    except SystemExit as e:
        if e.code not in (0, None):
            err.write("flocker-deploy: deploy failed unexpectedly (exit %s)\n" % (e.code,))
            return EXIT_NODE_FAILED
    return outcome["status"]


def _steps(change) -> List[str]:
    """The plan a node would run, one line per step, in order; a step with
    an undo shows it indented below."""
    from ..changes import SetRoutes, UndoOnFailure, leaves
    result: List[str] = []
    for step in leaves(change):
        if isinstance(step, SetRoutes):
            result.extend("route %s %s" % (name, route) for name, _, route in step.routes)
        elif isinstance(step, UndoOnFailure):
            result.append(step.change.summary)
            result.append("  if that fails, undo: " + "; ".join(
                s.summary for s in leaves(step.undo)))
        else:
            result.append(step.summary)
    return result


def main(argv: Optional[List[str]] = None, out: Optional[TextIO] = None,
         err: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    options = DeployOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        err.write("flocker-deploy: %s\n%s\n" % (e, options.synopsis))
        err.write("Run flocker-deploy --help for the options.\n")
        return EXIT_USAGE
    try:
        if options["validate"]:
            return validate(options, out, err)
        return run_deploy(options, out, err, dry=options["dry-run"])
    except KeyboardInterrupt:
        err.write("flocker-deploy: interrupted; nodes finish what they started "
                  "and keep converging to what they last received\n")
        return EXIT_NODE_FAILED


if __name__ == "__main__":
    sys.exit(main())
