"""
Network namespaces for functional tests (root only).

Every namespace the tests make is named with the prefix ``fat-`` so stale
ones from a crashed run can be found and removed.  Nothing here touches the
host's own network: namespaces get no default route, bridges live inside a
namespace of their own, and addresses come from a lab subnet checked
against the host's routes.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import subprocess
import time
import uuid

PREFIX = "fat-"


def require_root(testcase):
    from twisted.trial.unittest import SkipTest

    if os.geteuid() != 0:
        # CI runs as root; a developer without root sees why these are skipped.
        raise SkipTest("functional tests need root")


def run(argv, check=True, **kwargs):
    """Run a command for test set-up (blocking is fine outside the reactor)."""
    return subprocess.run(argv, check=check, capture_output=True, **kwargs)


def netns_exec(name, argv, **kwargs):
    return run(["ip", "netns", "exec", name] + list(argv), **kwargs)


def unique_name(kind):
    return "%s%s-%s" % (PREFIX, kind, uuid.uuid4().hex[:6])


def host_routes():
    out = run(["ip", "-o", "route", "show", "table", "all"]).stdout.decode()
    nets = []
    for line in out.splitlines():
        dest = line.split()[0]
        if dest in ("default", "local", "broadcast", "unreachable", "multicast"):
            continue
        try:
            nets.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            pass
    return nets


def free_subnet():
    """A /24 under 10.213.0.0/16 that overlaps nothing the host routes."""
    used = host_routes()
    for third in range(1, 255):
        candidate = ipaddress.ip_network("10.213.%d.0/24" % third)
        if not any(candidate.overlaps(n) for n in used if n.version == 4):
            # Avoid subnets used by other test namespaces running in parallel.
            return candidate
    raise RuntimeError("no free lab subnet under 10.213.0.0/16")


class Lan:
    """
    A switch namespace with a bridge, and ``add_host()`` to plug a new
    namespace into it with an address.  ``close()`` removes everything.
    """

    def __init__(self, subnet=None):
        self.subnet = subnet or free_subnet()
        self.switch = unique_name("sw")
        self.hosts = []
        run(["ip", "netns", "add", self.switch])
        try:
            netns_exec(self.switch,
                       ["ip", "link", "add", "br0", "type", "bridge"])
            netns_exec(self.switch, ["ip", "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise

    def address(self, index):
        return str(self.subnet.network_address + index)

    def add_host(self, index):
        name = unique_name("h%d" % index)
        run(["ip", "netns", "add", name])
        self.hosts.append(name)
        port = "p%d" % index
        run(["ip", "link", "add", port, "netns", self.switch, "type", "veth",
             "peer", "name", "eth0", "netns", name])
        netns_exec(self.switch, ["ip", "link", "set", port, "master", "br0", "up"])
        netns_exec(name, ["ip", "addr", "add",
                          "%s/%d" % (self.address(index), self.subnet.prefixlen),
                          "dev", "eth0"])
        netns_exec(name, ["ip", "link", "set", "eth0", "up"])
        netns_exec(name, ["ip", "link", "set", "lo", "up"])
        return name

    def close(self):
        for name in self.hosts + [self.switch]:
            run(["ip", "netns", "del", name], check=False)
        self.hosts = []


def netns_prefix(name):
    """The argv prefix that runs a command inside namespace ``name``."""
    return ("ip", "netns", "exec", name)


def add_namespace(kind="ns"):
    """A new, unconnected namespace (loopback up); delete_namespace() it."""
    name = unique_name(kind)
    run(["ip", "netns", "add", name])
    try:
        netns_exec(name, ["ip", "link", "set", "lo", "up"])
    except BaseException:
        delete_namespace(name)
        raise
    return name


def delete_namespace(name):
    run(["ip", "netns", "del", name], check=False)


class NamespaceProcess:
    """
    A background process inside a namespace, talked to line by line.  Every
    read has a deadline, and ``stop()`` (safe to call twice) kills it, so a
    test that fails leaves nothing running.
    """

    def __init__(self, namespace, argv):
        self.argv = list(netns_prefix(namespace)) + list(argv)
        self._buffer = b""
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)

    def send_line(self, text):
        self.process.stdin.write(text.encode("utf-8") + b"\n")
        self.process.stdin.flush()

    def poll_line(self, timeout):
        """The next output line, or None if none arrives within timeout."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    if self._buffer:
                        break
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def read_line(self, timeout):
        """The next output line; a test failure naming the process if none."""
        from twisted.trial.unittest import FailTest

        line = self.poll_line(timeout)
        if line is None:
            raise FailTest(
                "no output within %.1fs from %s (exit status %s, stderr %r)"
                % (timeout, self.description(), self.process.poll(),
                   self.stderr()))
        return line

    def description(self):
        """The command line, with inline scripts shortened."""
        return " ".join("<script>" if "\n" in word else word
                        for word in self.argv)

    def stderr(self):
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout,
                       self.process.stderr):
            try:
                stream.close()
            except OSError:
                pass


def remove_stale():
    """Remove namespaces left behind by a crashed test run."""
    out = run(["ip", "netns", "list"], check=False).stdout.decode()
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            run(["ip", "netns", "del", name], check=False)
