"""
A flocker_async cluster on one machine: the ``Lab``.

Each node is a network namespace ``flab-<node>`` plugged into a bridge in
the switch namespace ``flab-sw``, with its own address, dockerd, zfs-fuse
pool ``flab-<node>`` and flocker-node daemon.  The host reaches the nodes
through one veth (``flab-host``) into the switch, as an operator's
workstation would.  Everything the lab makes is recorded in
``<directory>/lab.json`` and named with the ``flab-`` prefix, so ``down``
removes it all, also after a crash or a half-finished ``up``.

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
import time
from typing import Callable, Dict, List, Optional, Sequence

from attrs import frozen

from ..node._persist import write_atomically
from ..ssh._keys import load_or_create_key, load_or_create_node_keys, public_key_line
from . import _network as net
from ._dockerd import CONTAINERD_RUN, DockerdLayout, dockerd_running, start_dockerd, stop_dockerd
from ._system import (
    LabError, alive, cmdline, kill_all, log_tail, mounts_under, pids_mentioning,
    process_start_time, require_commands, run, system_env, unmount_all,
)
from ._zfs import (
    destroy_pool, ensure_pool, ensure_zfs_daemon, pools, restart_if_wedged)
from .images import (
    BUSYBOX_CHANGES, BUSYBOX_IMAGE, DEFAULT_CACHE_DIR, MARIADB_CHANGES, MARIADB_IMAGE,
    busybox_tarball, mariadb_tarball,
)

__all__ = ["Lab", "LabNames", "LabNode", "NodeStatus", "DaemonStartError", "LAB_DIR",
           "SSH_PORT", "MAX_NODES", "parse_node_name"]

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


@frozen
class NodeStatus:
    name: str
    address: str
    namespace: bool
    dockerd: bool
    pool: Optional[str]       # health, or None when there is no pool
    daemon: bool              # our flocker-node process is running
    ssh: bool                 # and answers on its SSH port

    def line(self) -> str:
        return "%-4s %-15s namespace %-4s dockerd %-4s pool %-8s daemon %s" % (
            self.name, self.address, _updown(self.namespace),
            _updown(self.dockerd), (self.pool or "missing").lower(),
            ("up" if self.ssh else "starting") if self.daemon else "down")


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
        self._children = {}
        self._log_offsets = {}

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
        """Node ``name`` (``n1``), or ``LabError`` saying which exist."""
        if isinstance(name, LabNode):
            return name
        parse_node_name(name)
        nodes = self.nodes
        for node in nodes:
            if node.name == name:
                return node
        if not nodes:
            raise LabError("there is no lab; start one with 'flocker-lab up'")
        raise LabError("the lab has no node %s; its nodes are %s"
                       % (name, ", ".join(n.name for n in nodes)))

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
            self._up_network(nodes_list)
            self._up_pools(nodes_list)
            self._up_keys(nodes_list)
            self._up_dockerds(nodes_list)
            self._up_images(nodes_list)
            failures = {}
            if daemons:
                failures = self._up_daemons(nodes_list)
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
            entries.append(entry)
        state.update(
            version=_STATE_VERSION, subnet=str(subnet),
            host_address=str(net.host_address(subnet)), ssh_port=SSH_PORT,
            nodes=entries)
        state.setdefault("containerd_run_existed", os.path.exists(CONTAINERD_RUN))
        self._write_state(state)
        return [self._node(e) for e in entries]

    def _up_network(self, nodes: Sequence[LabNode]) -> None:
        subnet = ipaddress.ip_network(self.subnet)
        switch = self.names.switch
        net.ensure_switch(switch)
        net.ensure_host_link(subnet, switch, self.names.host_veth)
        for node in nodes:
            net.ensure_namespace(node.namespace)
            net.ensure_node_link(node.namespace, "p%d" % (node.index,),
                                 node.address, subnet, switch)
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
                if (isinstance(pid, int) and alive(pid)
                        and process_start_time(pid) == entry["daemon"].get("start")
                        and node.config_path in cmdline(pid)):
                    return pid
        return None

    def _record_daemon(self, node: LabNode, record: Optional[dict]) -> None:
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
                elif _ssh_answers(node.address, self.ssh_port):
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

    def _reap(self, node: LabNode) -> str:
        """Collect a child daemon that exited; ' with status N' if known."""
        for pid, process in list(self._children.items()):
            if node.config_path in process.args and process.poll() is not None:
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

    def env(self) -> Dict[str, str]:
        """The environment that points flocker-deploy at this lab."""
        if not self.exists:
            raise LabError("there is no lab; start one with 'flocker-lab up'")
        return env_for(self.identity, self.known_hosts, self.ssh_port)

    def status(self) -> List[NodeStatus]:
        found = pools(self.names.prefix)
        result = []
        namespaces = net.namespaces()
        for node in self.nodes:
            daemon = self._daemon_pid(node) is not None
            result.append(NodeStatus(
                name=node.name, address=node.address,
                namespace=node.namespace in namespaces,
                dockerd=dockerd_running(node.dockerd),
                pool=found.get(node.pool),
                daemon=daemon,
                ssh=daemon and _ssh_answers(node.address, self.ssh_port)))
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
