"""
A flocker_async cluster on one machine: the ``Lab``.

Each node is a network namespace ``flab-<node>`` plugged into a bridge in
the switch namespace ``flab-sw``, with its own address, dockerd, zfs-fuse
pool ``flab-<node>`` and flocker-node daemon.  The host reaches the nodes
through one veth (``flab-host``) into the switch, as an operator's
workstation would.  Everything the lab makes is recorded in
``<directory>/lab.json`` and named with the ``flab-`` prefix, so ``down``
removes it all, also after a crash or a half-finished ``up``.

Failures for tests: ``power_off`` pulls a node's plug (every process of it
SIGKILLed at one instant, its iptables flushed, its link down; its pool
and docker's data root kept), ``power_on`` boots it again; ``partition``
and ``heal`` take its link down and up with everything on it running.
Both facts are recorded per node in the state (``power``, ``partitioned``),
so ``up`` leaves them as they are and ``status`` shows them.

This is blocking code for a command-line tool and for test fixtures; it
is never run on a reactor thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Set

from attrs import frozen

from ..node._persist import write_atomically
from ..ssh._keys import load_or_create_key, load_or_create_node_keys, public_key_line
from . import _network as net
from ._dockerd import CONTAINERD_RUN, DockerdLayout, dockerd_running, start_dockerd, stop_dockerd
from ._system import (
    LabError, alive, ancestors, cmdline, descendants, kill_all, kill_at_once,
    log_tail, mounts_under, pids_in_cgroups, pids_in_netns, pids_mentioning,
    process_start_time, require_commands, run, system_env, unmount_all,
)
from ._zfs import (
    destroy_pool, ensure_pool, ensure_zfs_daemon, pools, restart_if_wedged,
    restart_zfs_daemon)
from .images import (
    BUSYBOX_CHANGES, BUSYBOX_IMAGE, DEFAULT_CACHE_DIR, MARIADB_CHANGES, MARIADB_IMAGE,
    busybox_tarball, mariadb_tarball,
)

__all__ = ["Lab", "LabNames", "LabNode", "NodeStatus", "DaemonStartError", "LAB_DIR",
           "SSH_PORT", "MAX_NODES", "parse_node_name", "NodePoweredOff"]

LAB_DIR = "/var/lib/flocker-lab"
STATE_FILE = "lab.json"
LOCK_FILE = "/run/lock/flocker-lab.lock"
SSH_PORT = 4522
CONVERGENCE_INTERVAL = 5
MAX_NODES = 20
DEFAULT_NODES = 2
DAEMON_START_TIMEOUT = 30.0
IMAGE_LABEL = "flocker-lab.source"
_STATE_VERSION = 1


class DaemonStartError(LabError):
    """flocker-node did not come up on some nodes; everything else did."""

    def __init__(self, failures: Dict[str, str]):
        self.failures = dict(failures)
        super().__init__("\n".join(
            "flocker-node on %s did not start: %s" % (name, why)
            for name, why in sorted(self.failures.items())))


class NodePoweredOff(LabError):
    """The node is powered off, and what was asked needs it running."""


# What a booted machine's iptables hold: every table empty, every built-in
# chain accepting; iptables-restore replaces each table in one commit.
_EMPTY_IPTABLES = b"""\
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def parse_node_name(name: str) -> int:
    """The index of node ``name`` (``n1`` is 1); ``LabError`` otherwise."""
    if (not isinstance(name, str) or not name.startswith("n")
            or not name[1:].isdigit() or name[1:].startswith("0")):
        raise LabError("%r is not a lab node name; nodes are n1, n2, ..."
                       % (name,))
    return int(name[1:])


@frozen
class LabNode:
    """One node of the lab and where its pieces are."""

    name: str
    index: int
    address: str
    namespace: str
    directory: str
    docker_socket: str
    state_directory: str
    pool: str
    pool_file: str
    mount_root: str
    config_path: str
    bridge: str

    @property
    def docker_host(self) -> str:
        return "unix://" + self.docker_socket

    @property
    def netns_path(self) -> str:
        return net.netns_path(self.namespace)

    @property
    def daemon_log(self) -> str:
        return os.path.join(self.directory, "flocker-node.log")

    @property
    def daemon_output(self) -> str:
        return os.path.join(self.directory, "flocker-node.out")

    @property
    def dockerd(self) -> DockerdLayout:
        return DockerdLayout(self.directory, self.namespace)

    @property
    def switch_port(self) -> str:
        """The bridge port in the switch namespace that eth0 is plugged into."""
        return "p%d" % (self.index,)


@frozen
class NodeStatus:
    name: str
    address: str
    namespace: bool
    dockerd: bool
    pool: Optional[str]       # health, or None when there is no pool
    daemon: bool              # our flocker-node process is running
    ssh: bool                 # and answers on its SSH port (seen from
                              # inside the node while its link is down)
    power: bool = True        # recorded: False after power_off
    link: bool = True         # its bridge port is up
    partitioned: bool = False  # recorded: True after partition

    @property
    def healthy(self) -> bool:
        """Everything up, the node powered on and reachable."""
        return (self.power and self.link and not self.partitioned
                and self.namespace and self.dockerd
                and self.pool == "ONLINE" and self.ssh)

    def line(self) -> str:
        return ("%-4s %-15s power %-3s link %-4s namespace %-4s dockerd %-4s "
                "pool %-8s daemon %s%s") % (
            self.name, self.address, "on" if self.power else "off",
            _updown(self.link), _updown(self.namespace),
            _updown(self.dockerd), (self.pool or "missing").lower(),
            ("up" if self.ssh else "starting") if self.daemon else "down",
            "  (partitioned)" if self.partitioned else "")


_PREFIX = re.compile(r"[a-z][a-z0-9]{0,5}-\Z")


@frozen
class LabNames:
    """
    The names of one lab's pieces, all starting with ``prefix``: the
    switch namespace, the host veth, and per node its namespace, pool and
    cgroup parent.  A lab only ever removes pieces named PREFIX + node
    (``flab-n1``), PREFIX + ``sw`` and PREFIX + ``host``.
    """

    prefix: str = net.PREFIX

    def __attrs_post_init__(self):
        if not _PREFIX.match(self.prefix):
            raise LabError("invalid lab prefix %r: 1-6 lower-case letters or "
                           "digits and a '-'" % (self.prefix,))

    @property
    def switch(self) -> str:
        return self.prefix + "sw"

    @property
    def host_veth(self) -> str:
        return self.prefix + "host"

    def namespace(self, node: str) -> str:
        return self.prefix + node

    def node_of(self, namespace: str) -> Optional[str]:
        """The node whose namespace ``namespace`` is, or None."""
        if namespace.startswith(self.prefix):
            rest = namespace[len(self.prefix):]
            if _is_node_name(rest):
                return rest
        return None


def _updown(flag: bool) -> str:
    return "up" if flag else "down"


def _lab_method(function):
    """``Lab.up(...)`` on the class is ``Lab().up(...)``."""

    class Method:
        def __get__(self, instance, owner):
            if instance is None:
                return lambda *a, **kw: function(owner(), *a, **kw)
            return functools.partial(function, instance)

    return Method()


def _print_progress(line: str) -> None:
    print(line, flush=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("flocker-lab must run as root: it creates network "
                       "namespaces, docker daemons and ZFS pools (try sudo)")


def _twistd() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("twistd")
    if found is None:
        raise LabError("twistd not found; install flocker_async (pip install "
                       "-e .) in the Python environment that runs flocker-lab")
    return found


# Run by the lab's Python inside a node's namespace: exit 0 if SSH greets.
_SSH_PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), 1) as s:
        s.settimeout(1)
        sys.exit(0 if s.recv(8).startswith(b"SSH-") else 1)
except OSError:
    sys.exit(1)
"""


def _ssh_answers_inside(node: LabNode, port: int) -> bool:
    """Whether ``node``'s SSH port greets a client in its own namespace."""
    try:
        return run(net.nsenter_prefix(node.namespace) + [
            sys.executable, "-c", _SSH_PROBE, node.address, str(port)],
            check=False, timeout=10).returncode == 0
    except LabError:
        return False


def _powered_on(entry: dict) -> bool:
    return entry.get("power", "on") != "off"


def _link_wanted(entry: dict) -> bool:
    """A node's link is up exactly when it is powered on and not partitioned."""
    return _powered_on(entry) and not entry.get("partitioned", False)


def _describe_killed(killed: Dict[int, str]) -> str:
    """``12 processes (containerd, dockerd, httpd x2, ...)``."""
    counts: Dict[str, int] = {}
    for name in killed.values():
        counts[name] = counts.get(name, 0) + 1
    return "%d process%s (%s)" % (
        len(killed), "" if len(killed) == 1 else "es", ", ".join(
            name if n == 1 else "%s x%d" % (name, n)
            for name, n in sorted(counts.items())))


def _runs_with(pid: int, start: Optional[str], argument: str) -> bool:
    """
    Whether ``pid`` runs, started at ``start`` and with ``argument`` on its
    command line (the same pid and start time after a reboot may be another
    program).  A command line read while the process execs comes back empty
    or torn, so it is read again for a moment before it counts against.
    """
    for _ in range(50):
        if not alive(pid) or process_start_time(pid) != start:
            return False
        if argument in cmdline(pid):
            return True
        time.sleep(0.01)
    return False


def _ssh_answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an SSH server greets us at ``address:port``."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class Lab:
    """
    The lab cluster recorded in ``directory``.  Creating a ``Lab`` changes
    nothing; ``up()`` builds (or mends) it and ``down()`` removes it.
    ``progress`` receives one line per long step.
    """

    def __init__(self, directory: str = LAB_DIR,
                 cache_dir: str = DEFAULT_CACHE_DIR,
                 progress: Optional[Callable[[str], None]] = None,
                 prefix: str = net.PREFIX,
                 lock_file: str = LOCK_FILE):
        self.directory = os.path.abspath(directory)
        self.cache_dir = cache_dir
        self.progress = progress or (lambda line: None)
        self.names = LabNames(prefix)
        # One lock for every lab on the machine: two labs choosing a subnet
        # at once could otherwise choose the same one.
        self.lock_file = lock_file
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}
        # The state file is read, changed and written back: threads that
        # work on different nodes at once (the soak's) must not lose each
        # other's changes.
        self._state_lock = threading.RLock()
        self._log_offsets: Dict[str, Dict[str, int]] = {}

    def __repr__(self) -> str:
        return "<Lab %s>" % (self.directory,)

    # --- paths ---------------------------------------------------------------

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    @property
    def identity(self) -> str:
        """The operator's private key (FLOCKER_IDENTITY)."""
        return os.path.join(self.directory, "operator", "id_ed25519")

    @property
    def known_hosts(self) -> str:
        """Every node's host key (FLOCKER_KNOWN_HOSTS)."""
        return os.path.join(self.directory, "known_hosts")

    # --- state ---------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            with open(self.state_path, "rb") as f:
                state = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise LabError("cannot read the lab state %s (%s); run "
                           "'flocker-lab down' to remove the lab"
                           % (self.state_path, e))
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise LabError("%s is not a lab state this version understands; "
                           "run 'flocker-lab down'" % (self.state_path,))
        return state

    def _write_state(self, state: dict) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        write_atomically(self.state_path, json.dumps(
            state, indent=2, sort_keys=True).encode("utf-8") + b"\n", 0o644)

    def _node(self, entry: dict) -> LabNode:
        name = entry["name"]
        directory = os.path.join(self.directory, name)
        return LabNode(
            name=name,
            index=entry["index"],
            address=entry["address"],
            namespace=self.names.namespace(name),
            directory=directory,
            docker_socket=os.path.join(directory, "docker.sock"),
            state_directory=os.path.join(directory, "state"),
            pool=self.names.namespace(name),
            pool_file=os.path.join(self.directory, "pools",
                                   self.names.namespace(name) + ".img"),
            mount_root=os.path.join(directory, "volumes"),
            config_path=os.path.join(directory, "node.yml"),
            bridge=entry["bridge"],
        )

    @property
    def exists(self) -> bool:
        return os.path.exists(self.state_path)

    @property
    def nodes(self) -> List[LabNode]:
        """The lab's nodes, n1 first (empty when there is no lab)."""
        return [self._node(e) for e in self._read_state().get("nodes", [])]

    @property
    def host_address(self) -> Optional[str]:
        return self._read_state().get("host_address")

    @property
    def subnet(self) -> Optional[str]:
        return self._read_state().get("subnet")

    @property
    def ssh_port(self) -> int:
        return self._read_state().get("ssh_port", SSH_PORT)

    def node(self, name: str) -> LabNode:
        """Node ``name`` (``n1``, or its address), or ``LabError`` saying
        which exist."""
        if isinstance(name, LabNode):
            return name
        nodes = self.nodes
        for node in nodes:
            if node.address == name:
                return node
        parse_node_name(name)
        for node in nodes:
            if node.name == name:
                return node
        if not nodes:
            raise LabError("there is no lab; start one with 'flocker-lab up'")
        raise LabError("the lab has no node %s; its nodes are %s"
                       % (name, ", ".join(n.name for n in nodes)))

    @staticmethod
    def _entry(state: dict, node: LabNode) -> dict:
        """``node``'s entry in ``state`` (the dict itself, to change it)."""
        for entry in state.get("nodes", []):
            if entry["name"] == node.name:
                return entry
        raise LabError("the lab has no node %s any more" % (node.name,))

    def is_powered_on(self, node) -> bool:
        """Whether ``node`` is powered on (False after ``power_off``)."""
        node = self.node(node)
        return _powered_on(self._entry(self._read_state(), node))

    def is_partitioned(self, node) -> bool:
        """Whether ``node`` is partitioned (True after ``partition``)."""
        node = self.node(node)
        return bool(self._entry(self._read_state(), node).get("partitioned"))

    def link_up(self, node) -> bool:
        """Whether ``node``'s link is up now, as the switch sees it."""
        return self._link_up(self.node(node))

    def _link_up(self, node: LabNode) -> bool:
        return net.node_link_up(node.switch_port, self.names.switch)

    def _set_link(self, node: LabNode, up: bool) -> None:
        net.set_node_link(node.switch_port, up, self.names.switch)

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.lock_file), exist_ok=True)
        with open(self.lock_file, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.progress("waiting for another flocker-lab up/down to finish")
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # --- up --------------------------------------------------------------------

    @_lab_method
    def up(self, nodes: Optional[int] = None, daemons: bool = True) -> "Lab":
        """
        Build the lab, or check and mend a running or half-built one.
        ``nodes`` defaults to the running lab's count, else 2.  Raises
        ``DaemonStartError`` (after everything else is up) when flocker-node
        does not start on some node.
        """
        require_root()
        require_commands(["ip", "nsenter", "sysctl", "dockerd", "docker",
                          "zpool", "zfs", "zfs-fuse", "tar", "iptables"])
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int)
                                  or not 1 <= nodes <= MAX_NODES):
            raise LabError("the number of nodes must be 1 to %d, not %r"
                           % (MAX_NODES, nodes))
        with self._locked():
            started = time.monotonic()
            nodes_list = self._plan(nodes)
            running = self._running_nodes(nodes_list)
            self._up_network(nodes_list)
            self._up_pools(nodes_list)
            self._up_keys(nodes_list)
            self._up_dockerds(running)
            self._up_images(running)
            failures = {}
            if daemons:
                failures = self._up_daemons(running)
            self.progress("lab up: %d node%s on %s, host %s (%.0f s)" % (
                len(nodes_list), "" if len(nodes_list) == 1 else "s",
                self.subnet, self.host_address, time.monotonic() - started))
        if failures:
            raise DaemonStartError(failures)
        return self

    def _plan(self, count: Optional[int]) -> List[LabNode]:
        """Decide subnet, addresses and bridges; record them before acting."""
        state = self._read_state()
        routes = net.host_routes()
        subnet = net.choose_subnet(routes, state.get("subnet"),
                                   self.names.host_veth)
        old = {e["name"]: e for e in state.get("nodes", [])}
        if count is None:
            count = len(old) or DEFAULT_NODES
        extra = [self._node(e) for name, e in old.items()
                 if parse_node_name(name) > count]
        for node in extra:
            self.progress("removing node %s" % (node.name,))
            self._remove_node(node, state)
        bridges = [str(b) for b in net.choose_bridge_subnets(
            routes, MAX_NODES, subnet, self.names.host_veth)]
        entries = []
        for index in range(1, count + 1):
            name = "n%d" % (index,)
            entry = dict(old.get(name, {}))
            entry.update(name=name, index=index,
                         address=str(net.node_address(subnet, index)))
            if "bridge" not in entry:
                taken = {e.get("bridge") for e in old.values()}
                free = [b for b in bridges if b not in taken]
                entry["bridge"] = free[index - 1] if index - 1 < len(free) else free[0]
            entry.setdefault("daemon", None)
            entry.setdefault("power", "on")
            entry.setdefault("partitioned", False)
            entries.append(entry)
        state.update(
            version=_STATE_VERSION, subnet=str(subnet),
            host_address=str(net.host_address(subnet)), ssh_port=SSH_PORT,
            nodes=entries)
        state.setdefault("containerd_run_existed", os.path.exists(CONTAINERD_RUN))
        self._write_state(state)
        return [self._node(e) for e in entries]

    def _running_nodes(self, nodes: Sequence[LabNode]) -> List[LabNode]:
        """The powered-on ones of ``nodes``; says which it leaves as they are."""
        state = self._read_state()
        running = []
        for node in nodes:
            entry = self._entry(state, node)
            if not _powered_on(entry):
                self.progress("%s is powered off: left it off ('flocker-lab "
                              "power-on %s' starts it)" % (node.name, node.name))
            else:
                running.append(node)
                if entry.get("partitioned"):
                    self.progress("%s is partitioned: left its link down "
                                  "('flocker-lab heal %s' brings it up)"
                                  % (node.name, node.name))
        return running

    def _up_network(self, nodes: Sequence[LabNode]) -> None:
        subnet = ipaddress.ip_network(self.subnet or "")
        switch = self.names.switch
        state = self._read_state()
        net.ensure_switch(switch)
        net.ensure_host_link(subnet, switch, self.names.host_veth)
        for node in nodes:
            net.ensure_namespace(node.namespace)
            net.ensure_node_link(
                node.namespace, node.switch_port, node.address, subnet, switch,
                link_up=_link_wanted(self._entry(state, node)))
        for name in net.namespaces():  # nodes of an earlier, bigger lab
            if (self.names.node_of(name) is not None
                    and name not in {n.namespace for n in nodes}):
                net.delete_namespace(name)

    def _up_pools(self, nodes: Sequence[LabNode]) -> None:
        ensure_zfs_daemon(progress=self.progress)
        wanted = {n.pool for n in nodes}
        for name in pools(self.names.prefix):
            if name not in wanted:
                self.progress("removing stale pool %s" % (name,))
                destroy_pool(name)
        for node in nodes:
            os.makedirs(node.directory, mode=0o755, exist_ok=True)
            if ensure_pool(node.pool, node.pool_file,
                           os.path.join(node.directory, "pool")):
                self.progress("created pool %s on %s" % (node.pool, node.pool_file))
        restart_if_wedged(progress=self.progress)  # the new pools answer too

    def _up_keys(self, nodes: Sequence[LabNode]) -> None:
        operator = load_or_create_key(self.identity, "flocker-lab operator")
        operator_line = public_key_line(operator, "flocker-lab operator") + "\n"
        port = self.ssh_port
        known = []
        for node in nodes:
            keys = load_or_create_node_keys(node.state_directory,
                                            "flocker-lab " + node.name)
            host_line = public_key_line(keys.host_key)
            # The plain address for conch's KnownHostsFile; [addr]:port for
            # OpenSSH, which looks up that form for ports other than 22.
            known.append("%s %s\n" % (node.address, host_line))
            known.append("[%s]:%d %s\n" % (node.address, port, host_line))
            operator_keys = os.path.join(node.state_directory, "operator_keys")
            write_atomically(operator_keys, operator_line.encode("ascii"), 0o600)
            write_atomically(node.config_path,
                             self._node_yml(node, operator_keys).encode("utf-8"),
                             0o644)
        write_atomically(self.known_hosts, "".join(known).encode("ascii"), 0o644)

    def _node_yml(self, node: LabNode, operator_keys: str) -> str:
        return "\n".join([
            "# flocker-node configuration of lab node %s (made by flocker-lab)"
            % (node.name,),
            "address: %s" % (node.address,),
            "ssh_port: %d" % (self.ssh_port,),
            "state_directory: %s" % (node.state_directory,),
            "zfs:",
            "  pool: %s" % (node.pool,),
            "  mount_root: %s" % (node.mount_root,),
            "docker_socket: %s" % (node.docker_socket,),
            "operator_keys: %s" % (operator_keys,),
            "convergence_interval: %d" % (CONVERGENCE_INTERVAL,),
            "",
        ])

    def _up_dockerds(self, nodes: Sequence[LabNode]) -> None:
        for node in nodes:
            if dockerd_running(node.dockerd):
                continue
            self.progress("starting dockerd on %s" % (node.name,))
            daemon = self._daemon_pid(node)
            start_dockerd(node.dockerd, _gateway_cidr(node.bridge),
                          spare=[daemon] if daemon else [])

    def _image_label(self, node: LabNode, image) -> Optional[str]:
        result = run(["docker", "-H", node.docker_host, "image", "inspect",
                      "--format", '{{index .Config.Labels "%s"}}' % (IMAGE_LABEL,),
                      image.full_name], check=False)
        if result.returncode != 0:
            return None
        return result.stdout.decode().strip()

    def _up_images(self, nodes: Sequence[LabNode]) -> None:
        busybox = busybox_tarball(self.cache_dir)
        mariadb = mariadb_tarball(self.cache_dir, progress=self.progress)
        for image, tarball, changes in (
                (BUSYBOX_IMAGE, busybox, BUSYBOX_CHANGES),
                (MARIADB_IMAGE, mariadb, MARIADB_CHANGES)):
            label = os.path.basename(tarball)[:-len(".tar")]
            missing = [n for n in nodes if self._image_label(n, image) != label]
            if not missing:
                continue
            started = time.monotonic()
            self.progress("importing %s (%d MB) into %s" % (
                image.full_name, os.path.getsize(tarball) >> 20,
                ", ".join(n.name for n in missing)))
            processes = []
            for node in missing:
                argv = ["docker", "-H", node.docker_host, "import"]
                for change in tuple(changes) + ("LABEL %s=%s" % (IMAGE_LABEL, label),):
                    argv += ["--change", change]
                argv += [tarball, image.full_name]
                processes.append((node, subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=system_env())))
            problems = []
            for node, process in processes:
                out, err = process.communicate()
                if process.returncode != 0:
                    problems.append("%s: %s" % (node.name, err.decode(
                        "utf-8", "replace").strip() or "docker import exited "
                        "with status %s" % (process.returncode,)))
            if problems:
                raise LabError("importing %s failed on %s" % (
                    image.full_name, "; ".join(problems)))
            for node in missing:  # the replaced image, no longer tagged
                run(["docker", "-H", node.docker_host, "image", "prune", "-f"],
                    check=False)
            self.progress("  imported %s in %.0f s" % (
                image.full_name, time.monotonic() - started))

    # --- the node daemons ----------------------------------------------------------

    def _daemon_pid(self, node: LabNode, state: Optional[dict] = None) -> Optional[int]:
        """The pid of ``node``'s flocker-node if it is running and ours."""
        state = self._read_state() if state is None else state
        for entry in state.get("nodes", []):
            if entry["name"] == node.name and entry.get("daemon"):
                pid = entry["daemon"].get("pid")
                if (isinstance(pid, int) and _runs_with(
                        pid, entry["daemon"].get("start"), node.config_path)):
                    return pid
        return None

    def _record_daemon(self, node: LabNode, record: Optional[dict]) -> None:
        with self._state_lock:
            state = self._read_state()
            for entry in state.get("nodes", []):
                if entry["name"] == node.name:
                    entry["daemon"] = record
            self._write_state(state)

    def daemon_running(self, node) -> bool:
        return self._daemon_pid(self.node(node)) is not None

    def _spawn_daemon(self, node: LabNode) -> int:
        argv = net.nsenter_prefix(node.namespace) + [
            _twistd(), "--nodaemon", "--pidfile=", "--logfile=" + node.daemon_log,
            "flocker-node", "--config", node.config_path]
        self._log_offsets[node.name] = {
            path: _size(path) for path in (node.daemon_output, node.daemon_log)}
        with open(node.daemon_output, "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                cwd=node.directory, start_new_session=True, close_fds=True,
                env=system_env())
        # nsenter execs twistd: the child is the daemon itself.
        self._record_daemon(node, {"pid": process.pid,
                                   "start": process_start_time(process.pid)})
        self._children[process.pid] = process
        return process.pid

    def _daemon_failure(self, node: LabNode, why: str) -> str:
        tails = []
        offsets = self._log_offsets.get(node.name, {})
        for path in (node.daemon_output, node.daemon_log):
            tail = log_tail(path, 15, offsets.get(path, 0))
            if tail.strip():
                tails.append("the end of %s:\n%s" % (path, tail))
        return "%s\n%s" % (why, "\n".join(tails)) if tails else why

    def _wait_for_daemons(self, nodes: Sequence[LabNode],
                          timeout: float = DAEMON_START_TIMEOUT) -> Dict[str, str]:
        waiting = {n.name: n for n in nodes}
        failures = {}
        deadline = time.monotonic() + timeout
        while waiting:
            for name, node in list(waiting.items()):
                pid = self._daemon_pid(node)
                if pid is None:
                    status = self._reap(node)
                    failures[name] = self._daemon_failure(
                        node, "it exited%s" % (status,))
                    del waiting[name]
                elif self._daemon_answers(node):
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                for name, node in waiting.items():
                    failures[name] = self._daemon_failure(
                        node, "its SSH port %s:%d did not answer within %d s"
                        % (node.address, self.ssh_port, timeout))
                break
            if waiting:
                time.sleep(0.2)
        for name in failures:
            node = self.node(name)
            pid = self._daemon_pid(node)
            if pid is not None:  # alive but not serving: do not leave it
                kill_all([pid])
            self._reap(node)
            self._record_daemon(node, None)
        return failures

    def _daemon_answers(self, node: LabNode, state: Optional[dict] = None) -> bool:
        """Whether ``node``'s SSH port answers: from the host, or from inside
        the node while its link is down."""
        state = self._read_state() if state is None else state
        if _link_wanted(self._entry(state, node)):
            return _ssh_answers(node.address, self.ssh_port)
        return _ssh_answers_inside(node, self.ssh_port)

    def _reap(self, node: LabNode) -> str:
        """Collect a child daemon that exited; ' with status N' if known."""
        for pid, process in list(self._children.items()):
            argv = process.args if isinstance(process.args, (list, tuple)) else []
            if node.config_path in argv and process.poll() is not None:
                del self._children[pid]
                return " with status %s" % (process.returncode,)
        return ""

    def _up_daemons(self, nodes: Sequence[LabNode]) -> Dict[str, str]:
        starting = []
        for node in nodes:
            if self._daemon_pid(node) is None:
                self.progress("starting flocker-node on %s" % (node.name,))
                self._spawn_daemon(node)
            starting.append(node)
        return self._wait_for_daemons(starting)

    def start_daemon(self, node) -> None:
        """Start ``node``'s flocker-node (unless it runs) and wait for SSH."""
        require_root()
        node = self.node(node)
        self._refuse_powered_off(node, "'flocker-lab power-on %s' starts its "
                                 "dockerd and flocker-node" % (node.name,))
        if not os.path.exists(node.netns_path) or not dockerd_running(node.dockerd):
            raise LabError("node %s is not up (namespace or dockerd missing); "
                           "run 'flocker-lab up'" % (node.name,))
        if self._daemon_pid(node) is None:
            self._spawn_daemon(node)
        failures = self._wait_for_daemons([node])
        if failures:
            raise DaemonStartError(failures)

    def kill_daemon(self, node) -> bool:
        """SIGKILL ``node``'s flocker-node; False if it was not running."""
        require_root()
        node = self.node(node)
        self._refuse_powered_off(node, "nothing runs on it, its flocker-node "
                                 "neither")
        pid = self._daemon_pid(node)
        if pid is None:
            self._record_daemon(node, None)
            return False
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._reap(node)
        self._record_daemon(node, None)
        return True

    def dockerd_pid(self, node) -> Optional[int]:
        """The pid of ``node``'s dockerd if it runs (answering or not)."""
        node = self.node(node)
        try:
            with open(node.dockerd.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        if alive(pid) and node.dockerd.pidfile in cmdline(pid):
            return pid
        return None

    def kill_dockerd(self, node) -> bool:
        """
        SIGKILL ``node``'s dockerd, as a crash would: its containerd goes
        with it (dockerd starts it with a parent-death signal), the
        containers' shims and processes keep running until ``start_dockerd``.
        False if it was not running.
        """
        require_root()
        node = self.node(node)
        self._refuse_powered_off(node, "nothing runs on it, its dockerd neither")
        pid = self.dockerd_pid(node)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    def start_dockerd(self, node) -> bool:
        """
        Start ``node``'s dockerd unless it runs and answers, as systemd
        would after a crash: what the old one left (its containers, their
        shims, its mounts) is removed first, sparing flocker-node and every
        process it started.  True if it was started.
        """
        require_root()
        node = self.node(node)
        self._refuse_powered_off(node, "'flocker-lab power-on %s' starts it"
                                 % (node.name,))
        if dockerd_running(node.dockerd):
            return False
        daemon = self._daemon_pid(node)
        spare = {daemon} | descendants([daemon]) if daemon else set()
        start_dockerd(node.dockerd, _gateway_cidr(node.bridge), spare=sorted(spare))
        return True

    def restart_zfs(self) -> None:
        """
        Restart the machine's zfs-fuse now (every lab's pools, any other
        user's too): file systems in use meanwhile fail, and are mounted
        again before this returns.  For the soak; ``up``, ``power_off``
        and ``power_on`` restart it only when it stopped answering.
        """
        require_root()
        restart_zfs_daemon(progress=self.progress)

    # --- failures: power and partitions ---------------------------------------------

    def _refuse_powered_off(self, node: LabNode, why: str) -> None:
        if not _powered_on(self._entry(self._read_state(), node)):
            raise NodePoweredOff("node %s is powered off: %s" % (node.name, why))

    def _record(self, node: LabNode, **fields) -> dict:
        """Set ``fields`` in ``node``'s entry; returns the entry as it was."""
        with self._state_lock:
            state = self._read_state()
            entry = self._entry(state, node)
            before = dict(entry)
            entry.update(fields)
            self._write_state(state)
        return before

    def power_off(self, node) -> List[str]:
        """
        Pull ``node``'s plug: its link goes down, every process of it (its
        flocker-node and what it started, dockerd, containerd, the shims,
        the containers' processes, anything else in its namespace) is
        SIGKILLed as at one instant, and what a reboot clears goes: its
        iptables (nat, filter, raw, mangle), conntrack, docker's mounts and
        runtime directory.  Its pool (imported, mounted) and docker's data
        root, with the containers' last state, stay.

        Recorded first, so ``up`` leaves the node off and a power-off that
        was interrupted is finished by the next.  Returns what it did, one
        line each; nothing when the node was off already.
        """
        require_root()
        node = self.node(node)
        was_on = _powered_on(self._record(node, power="off"))
        done = []
        if self._link_up(node):
            self._set_link(node, False)
            done.append("link down")
        killed = self._kill_node(node)
        if killed:
            done.append("killed %s" % (_describe_killed(killed),))
        if was_on or killed:
            self._clear_runtime(node)
            done.append("iptables and conntrack flushed, docker's runtime "
                        "state cleared, as a reboot would; pool %s kept"
                        % (node.pool,))
        return done

    def _node_pids(self, node: LabNode, daemon: Optional[int]) -> Set[int]:
        """Every running process of ``node`` and every descendant of one."""
        pids = (set(pids_in_netns(node.netns_path))
                | pids_in_cgroups(node.dockerd.cgroup_parent)
                | set(_pids_running(node.config_path))
                | set(pids_mentioning(node.dockerd.root)))
        if daemon is not None:
            pids.add(daemon)
        pids |= descendants(pids)
        return {pid for pid in pids if alive(pid)}

    def _kill_node(self, node: LabNode) -> Dict[int, str]:
        """SIGKILL every process of ``node`` at once; pid -> command name."""
        daemon = self._daemon_pid(node)
        killed = kill_at_once(lambda: self._node_pids(node, daemon))
        left = self._node_pids(node, daemon) - ancestors()
        if left:  # forked while we looked: once more
            killed.update(kill_at_once(lambda: self._node_pids(node, daemon)))
            left = self._node_pids(node, daemon) - ancestors()
        self._reap(node)
        self._record_daemon(node, None)
        if left:
            raise LabError("processes of node %s survived SIGKILL: %s" % (
                node.name, ", ".join("%d (%s)" % (pid, " ".join(cmdline(pid)))
                                     for pid in sorted(left))))
        return killed

    def _clear_runtime(self, node: LabNode) -> None:
        """What a reboot clears on a node whose processes are all dead."""
        # Overlay and netns mounts, the exec root, shim sockets, cgroups;
        # the data root stays.
        stop_dockerd(node.dockerd)
        inside = net.nsenter_prefix(node.namespace)
        if os.path.exists(node.netns_path):
            run(inside + ["iptables-restore"], input=_EMPTY_IPTABLES)
            if shutil.which("conntrack", path=system_env()["PATH"]):
                run(inside + ["conntrack", "-F"], check=False)
        # Killing processes in the middle of their I/O is what wedged
        # zfs-fuse before; every node shares it.
        restart_if_wedged(progress=self.progress)

    def power_on(self, node) -> List[str]:
        """
        Boot ``node`` again: its link up (unless it is partitioned),
        dockerd started (containers come back per their restart policy
        only, as after a reboot), flocker-node started and answering on
        its SSH port.  On a node that is on, it starts whatever of it is
        not running.  Whatever ``exec`` left running in the namespace while
        it was off is killed as dockerd starts (as a reboot would).  Returns
        what it did, one line each; nothing when everything ran already.
        ``DaemonStartError`` if flocker-node did not come up.
        """
        require_root()
        node = self.node(node)
        if not os.path.exists(node.netns_path):
            raise LabError("node %s has no namespace; run 'flocker-lab up' "
                           "(it leaves a powered-off node off), then "
                           "power-on" % (node.name,))
        before = self._record(node, power="on")
        done = []
        if not before.get("partitioned"):
            if not self._link_up(node):
                self._set_link(node, True)
                done.append("link up")
        elif not _powered_on(before):
            done.append("link left down: %s is partitioned ('flocker-lab heal "
                        "%s' brings it up)" % (node.name, node.name))
        return done + self._boot(node)

    def _boot(self, node: LabNode) -> List[str]:
        """Start ``node``'s dockerd and flocker-node unless they run."""
        done = []
        if not dockerd_running(node.dockerd):
            if restart_if_wedged(progress=self.progress):
                done.append("restarted zfs-fuse, which did not answer file "
                            "requests any more")
            daemon = self._daemon_pid(node)
            start_dockerd(node.dockerd, _gateway_cidr(node.bridge),
                          spare=[daemon] if daemon else [])
            done.append("dockerd started (containers come back only per their "
                        "restart policy)")
        if self._daemon_pid(node) is None:
            self._spawn_daemon(node)
            failures = self._wait_for_daemons([node])
            if failures:
                raise DaemonStartError(failures)
            done.append("flocker-node started; its SSH port %d answers"
                        % (self.ssh_port,))
        return done

    def partition(self, node) -> List[str]:
        """
        Take ``node``'s link down and leave everything on it running: no
        other node and not the host reach its address, and it reaches none
        of them; inside its namespace (its daemon, its containers, a client
        run with ``exec``) all works.  Returns what it did; nothing when it
        was partitioned already.
        """
        require_root()
        node = self.node(node)
        before = self._record(node, partitioned=True)
        done = []
        if self._link_up(node):
            self._set_link(node, False)
            done.append("link down; everything on %s keeps running" % (node.name,))
        elif not before.get("partitioned"):
            done.append("partitioned; its link is down already (it is "
                        "powered off)" if not _powered_on(before)
                        else "partitioned; its link was down already")
        return done

    def heal(self, node) -> List[str]:
        """
        End ``node``'s partition: its link up again, unless it is powered
        off (``power_on`` brings it up then).  Returns what it did; nothing
        when it was not partitioned and its link is as it should be.
        """
        require_root()
        node = self.node(node)
        before = self._record(node, partitioned=False)
        done = []
        if _powered_on(before):
            if not self._link_up(node):
                self._set_link(node, True)
                done.append("link up")
        elif before.get("partitioned"):
            done.append("no longer partitioned; its link stays down while it "
                        "is powered off ('flocker-lab power-on %s')" % (node.name,))
        return done

    # --- using the lab -------------------------------------------------------------

    def exec_argv(self, node, argv: Sequence[str]):
        """``(argv, env)`` that run ``argv`` in ``node`` with its DOCKER_HOST."""
        node = self.node(node)
        if not argv:
            raise LabError("no command given to run on %s" % (node.name,))
        if not os.path.exists(node.netns_path):
            raise LabError("node %s has no namespace; run 'flocker-lab up'"
                           % (node.name,))
        env = system_env({"DOCKER_HOST": node.docker_host})
        return net.nsenter_prefix(node.namespace) + [str(a) for a in argv], env

    def exec(self, node, argv: Sequence[str], check: bool = False,
             timeout: Optional[float] = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``node``'s namespace; output captured by default."""
        full, env = self.exec_argv(node, argv)
        kwargs.setdefault("capture_output", True)
        return subprocess.run(full, env=env, check=check, timeout=timeout, **kwargs)

    def state(self, node, timeout: float = 30) -> dict:
        """
        ``node``'s own ``state`` report (its flocker-node's SSH command, as
        the operator), asked from inside its namespace with OpenSSH, so a
        partitioned node answers too.  ``LabError`` if it does not.
        """
        node = self.node(node)
        try:
            result = self.exec(node, [
                "ssh", "-p", str(self.ssh_port), "-i", self.identity,
                "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "root@" + node.address, "state"], timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError("%s did not answer state within %d s" % (node.name, timeout))
        if result.returncode != 0:
            raise LabError("%s did not answer state: %s" % (
                node.name, result.stderr.decode("utf-8", "replace").strip()))
        try:
            return json.loads(result.stdout)
        except ValueError as e:
            raise LabError("%s's state is not JSON: %s" % (node.name, e))

    def env(self) -> Dict[str, str]:
        """The environment that points flocker-deploy at this lab."""
        if not self.exists:
            raise LabError("there is no lab; start one with 'flocker-lab up'")
        return env_for(self.identity, self.known_hosts, self.ssh_port)

    def status(self) -> List[NodeStatus]:
        found = pools(self.names.prefix)
        result = []
        namespaces = net.namespaces()
        state = self._read_state()
        for node in self.nodes:
            entry = self._entry(state, node)
            daemon = self._daemon_pid(node, state) is not None
            result.append(NodeStatus(
                name=node.name, address=node.address,
                namespace=node.namespace in namespaces,
                dockerd=dockerd_running(node.dockerd),
                pool=found.get(node.pool),
                daemon=daemon,
                ssh=daemon and self._daemon_answers(node, state),
                power=_powered_on(entry),
                link=self._link_up(node),
                partitioned=bool(entry.get("partitioned"))))
        return result

    # --- down --------------------------------------------------------------------

    def _remove_node(self, node: LabNode, state: dict, zfs: bool = True) -> None:
        """Everything of one node: daemon, containers, dockerd, pool, netns."""
        pid = self._daemon_pid(node, state)
        victims = set(_pids_running(node.config_path))
        if pid is not None:
            victims.add(pid)
        kill_all(victims)
        stop_dockerd(node.dockerd)
        if zfs and node.pool in pools(self.names.prefix):
            destroy_pool(node.pool)
        unmount_all(node.directory)
        net.delete_namespace(node.namespace)
        if os.path.exists(node.pool_file):
            os.unlink(node.pool_file)
        if not mounts_under(node.directory):
            shutil.rmtree(node.directory, ignore_errors=True)

    @_lab_method
    def down(self) -> None:
        """
        Remove everything the lab made (the image cache stays), also after
        a crash or a half-finished ``up``.  Safe to run again.
        """
        require_root()
        with self._locked():
            try:
                state = self._read_state()
            except LabError:
                state = {}
            zfs = shutil.which("zpool", path=system_env()["PATH"]) is not None
            if zfs:
                # or our pools come back, faulted, later
                ensure_zfs_daemon(progress=self.progress)
            names = {e["name"] for e in state.get("nodes", [])}
            for namespace in net.namespaces():
                name = self.names.node_of(namespace)
                if name is not None:
                    names.add(name)
            if os.path.isdir(self.directory):
                names.update(e for e in os.listdir(self.directory)
                             if _is_node_name(e))
            for name in sorted(names):
                if not _is_node_name(name):
                    continue
                entry = next((e for e in state.get("nodes", [])
                              if e["name"] == name), None)
                node = self._node(entry or {"name": name,
                                            "index": parse_node_name(name),
                                            "address": "", "bridge": ""})
                self.progress("removing %s" % (name,))
                self._remove_node(node, state, zfs)
            if zfs:
                for pool in pools(self.names.prefix):
                    destroy_pool(pool)
            net.remove_host_link(self.names.host_veth)
            net.delete_namespace(self.names.switch)
            # Anything still running from the lab directory (a daemon whose
            # node we could not name, say).
            kill_all(pids_mentioning(self.directory))
            unmount_all(self.directory)
            left = mounts_under(self.directory)
            if left:
                raise LabError("could not unmount %s; remove them by hand and "
                               "run 'flocker-lab down' again" % (", ".join(left),))
            shutil.rmtree(self.directory, ignore_errors=True)
            if not state.get("containerd_run_existed", True):
                for directory in (CONTAINERD_RUN + "/s", CONTAINERD_RUN):
                    try:
                        os.rmdir(directory)  # only if nobody else uses it
                    except OSError:
                        break


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _gateway_cidr(bridge: str) -> str:
    """docker's --bip: the first address of the bridge subnet, with its length."""
    network = ipaddress.ip_network(bridge)
    return "%s/%d" % (network.network_address + 1, network.prefixlen)


def _is_node_name(name: str) -> bool:
    try:
        parse_node_name(name)
    except LabError:
        return False
    return True


def _pids_running(config_path: str) -> List[int]:
    """Processes that run with ``config_path`` on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and config_path in cmdline(int(entry)):
            found.append(int(entry))
    return found


def env_for(identity: str, known_hosts: str, port: int = SSH_PORT) -> Dict[str, str]:
    env = {"FLOCKER_IDENTITY": identity, "FLOCKER_KNOWN_HOSTS": known_hosts}
    if port != SSH_PORT:
        env["FLOCKER_PORT"] = str(port)
    return env


def export_lines(env: Dict[str, str]) -> List[str]:
    """``export K=V`` lines, quoted for a POSIX shell's eval."""
    return ["export %s=%s" % (key, shlex.quote(env[key])) for key in sorted(env)]
