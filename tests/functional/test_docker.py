"""
Functional tests for DockerClient against a real dockerd in its own network
namespace (root only; see tests/testtools/dockerd.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

from twisted.internet import reactor
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from flocker_async._process import CommandFailed, run_process
from flocker_async.docker import DockerClient, DockerError
from flocker_async.lab.images import (
    BUSYBOX_CHANGES, BUSYBOX_IMAGE, busybox_tarball, load_busybox_image)
from flocker_async.model import Application, AttachedVolume, Port
from tests.testtools.docker import make_idockerclient_tests, remove_all_units
from tests.testtools.dockerd import (
    Dockerd, _alive, _cgroup_dirs, _mounts_under, _pids_in_cgroups,
    _pids_in_netns, _pids_mentioning, remove_stale, shared_dockerd)
from tests.testtools.netns import require_root, run


@inlineCallbacks
def real_client(test):
    """A DockerClient of the shared test dockerd, with the busybox image."""
    require_root(test)
    daemon = shared_dockerd()
    client = DockerClient(reactor, daemon.socket_path)
    if not daemon.images_loaded:
        yield load_busybox_image(reactor, client)
        daemon.images_loaded = True
    # Whatever an earlier test could not clean up must not leak into this one.
    yield remove_all_units(client)
    return client


class DockerClientContractTests(make_idockerclient_tests(real_client)):
    """DockerClient honours the IDockerClient contract with a real engine."""


@inlineCallbacks
def fetch(netns_path, url, timeout=10.0):
    """
    GET ``url`` from inside the daemon's namespace with busybox wget,
    retrying while the server comes up.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            # busybox wget's own -T option segfaults (busybox-static
            # 1.35); bound each attempt by killing it instead.
            result = yield run_process(reactor, [
                "nsenter", "--net=" + netns_path,
                "busybox", "wget", "-q", "-O", "-", url,
            ]).addTimeout(5, reactor)
            return result.stdout
        except (CommandFailed, defer.TimeoutError):
            if time.monotonic() > deadline:
                raise
            yield deferLater(reactor, 0.1, lambda: None)


class DockerClientFunctionalTests(TestCase):
    """What only a real engine can show: traffic, cgroups, timing."""

    @inlineCallbacks
    def setUp(self):
        self.client = yield real_client(self)
        self.daemon = shared_dockerd()
        self.addCleanup(remove_all_units, self.client)

    def volume_path(self, files=None):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        for name, content in (files or {}).items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(content)
        return path

    def name(self):
        return "app-" + uuid.uuid4().hex[:8]

    @inlineCallbacks
    def test_api_version(self):
        """The engine here (20.10, API 1.41) is spoken to in 1.41."""
        version = yield self.client.api_version()
        self.assertEqual(version, "1.41")

    @inlineCallbacks
    def test_serves_volume_on_external_port(self):
        """
        A file in the volume's host directory is served by the container's
        httpd through the external port.
        """
        content = b"served from the volume " + uuid.uuid4().hex.encode()
        path = self.volume_path({"index.html": content})
        app = Application(
            name=self.name(), image=BUSYBOX_IMAGE,
            ports=[Port(internal_port=80, external_port=18180)],
            volume=AttachedVolume(mountpoint="/data"))
        yield self.client.add(app, path)
        body = yield fetch(self.daemon.netns_path,
                           "http://127.0.0.1:18180/index.html")
        self.assertEqual(body, content)

    @inlineCallbacks
    def test_environment_reaches_process(self):
        """
        The environment is the container process's: the serve script
        listens on $HTTP_PORT, reached through the matching binding.
        """
        path = self.volume_path({"hello.txt": b"hi\n"})
        app = Application(
            name=self.name(), image=BUSYBOX_IMAGE,
            environment={"HTTP_PORT": "8000", "HTTP_ROOT": "/srv"},
            ports=[Port(internal_port=8000, external_port=18181)],
            volume=AttachedVolume(mountpoint="/srv"))
        yield self.client.add(app, path)
        body = yield fetch(self.daemon.netns_path,
                           "http://127.0.0.1:18181/hello.txt")
        self.assertEqual(body, b"hi\n")

    @inlineCallbacks
    def test_limits_in_cgroups(self):
        """Memory limit and CPU shares reach the container's cgroups."""
        app = Application(name=self.name(), image=BUSYBOX_IMAGE,
                          mem_limit=48 * 1024 * 1024, cpu_shares=300)
        unit = yield self.client.add(app)
        base = "/sys/fs/cgroup/%s/" + self.daemon.name + "/" + unit.container_id
        with open(os.path.join(base % ("memory",),
                               "memory.limit_in_bytes")) as f:
            memory = int(f.read())
        with open(os.path.join(base % ("cpu",), "cpu.shares")) as f:
            shares = int(f.read())
        self.assertEqual((memory, shares), (48 * 1024 * 1024, 300))

    @inlineCallbacks
    def test_stop_is_prompt(self):
        """
        The busybox image's process exits on SIGTERM, so a stop with a long
        timeout returns at once instead of waiting for SIGKILL.
        """
        app = Application(name=self.name(), image=BUSYBOX_IMAGE)
        yield self.client.add(app)
        started = time.monotonic()
        yield self.client.stop(app.name, timeout=30)
        elapsed = time.monotonic() - started
        [unit] = yield self.client.list()
        self.assertFalse(unit.running)
        self.assertLess(elapsed, 10)

    @inlineCallbacks
    def test_unlabelled_containers_ignored(self):
        """Containers flocker did not create are not listed."""
        other = "fat-other-" + uuid.uuid4().hex[:8]
        docker = ["docker", "-H", "unix://" + self.daemon.socket_path]
        yield run_process(reactor, docker + [
            "create", "--name", other, BUSYBOX_IMAGE.full_name])
        self.addCleanup(run_process, reactor, docker + ["rm", "-f", other])
        app = Application(name=self.name(), image=BUSYBOX_IMAGE)
        yield self.client.add(app)
        units = yield self.client.list()
        self.assertEqual([u.name for u in units], [app.name])

    @inlineCallbacks
    def test_failed_start_leaves_nothing(self):
        """
        A container the engine creates but cannot start (a file bound over
        a directory) is removed again, so the name stays free.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"a file, not a directory\n")
        app = Application(name=self.name(), image=BUSYBOX_IMAGE,
                          volume=AttachedVolume(mountpoint="/bin"))
        error = yield self.assertFailure(self.client.add(app, path),
                                         DockerError)
        self.assertTrue(error.message)
        units = yield self.client.list()
        self.assertEqual(units, frozenset())


class DockerdFixtureTests(SynchronousTestCase):
    """The test dockerd fixture cleans up after a crashed run."""

    def setUp(self):
        require_root(self)

    def test_stale_daemon_removed(self):
        """
        A daemon whose owning process is gone is removed with its
        container: processes, mounts, cgroups, directory and namespace.
        The live shared daemon is left alone.
        """
        shared = shared_dockerd()
        daemon = Dockerd()
        daemon.start()
        self.addCleanup(daemon.stop)
        docker = ["docker", "-H", "unix://" + daemon.socket_path]
        run(docker + ["import", "-c", BUSYBOX_CHANGES[1], busybox_tarball(),
                      "stale:latest"])
        run(docker + ["run", "-d", "-p", "18190:80", "--name", "stale",
                      "stale:latest"])
        self.assertTrue(_pids_in_cgroups(daemon.name))
        # The owner record of a crashed run: a process that has exited.
        gone = subprocess.Popen(["true"])
        gone.wait()
        with open(os.path.join(daemon.directory, "owner"), "w") as f:
            json.dump({"pid": gone.pid, "start": "0"}, f)
        netns_before = set(_pids_in_netns(daemon.netns_path))

        remove_stale()

        self.assertEqual(
            (os.path.exists(daemon.directory),
             os.path.exists(daemon.netns_path),
             _mounts_under(daemon.directory),
             _pids_in_cgroups(daemon.name),
             _cgroup_dirs(daemon.name),
             [pid for pid in netns_before if _alive(pid)],
             _pids_mentioning(daemon.directory)),
            (False, False, [], set(), [], [], []))
        self.assertTrue(netns_before)
        self.assertTrue(os.path.exists(shared.socket_path))
