"""
The ``IDockerClient`` contract: one suite, run against ``MemoryDockerClient``
in tests/unit and against ``DockerClient`` with a real dockerd in
tests/functional.
"""

from __future__ import annotations

import os
import uuid

from attrs import evolve
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from flocker_async.docker import (
    DockerError, IDockerClient, configuration_digest, container_name,
    ensure_image)
from flocker_async.lab.images import BUSYBOX_IMAGE
from flocker_async.model import (
    Application, AttachedVolume, DockerImage, Port, RestartPolicy)

MISSING_IMAGE = DockerImage("flocker-lab/no-such-image", "never")


@inlineCallbacks
def remove_all_units(client):
    """Stop and remove every flocker container, ignoring failures."""
    units = yield client.list()
    for unit in units:
        try:
            yield client.stop(unit.name, timeout=1)
        except DockerError:
            pass
        try:
            yield client.remove(unit.name)
        except DockerError:
            pass


def make_idockerclient_tests(fixture):
    """
    A TestCase base class for an ``IDockerClient`` implementation.

    ``fixture(test_case)`` returns (or fires with) a client of an engine
    that has ``BUSYBOX_IMAGE`` and no flocker containers; it registers
    whatever cleanup its engine needs.
    """

    class IDockerClientTests(TestCase):

        @inlineCallbacks
        def setUp(self):
            self.client = yield maybeDeferred(fixture, self)
            self.addCleanup(remove_all_units, self.client)

        def application(self, **kwargs):
            """An application with a name unique to this test."""
            kwargs.setdefault("name", "app-" + uuid.uuid4().hex[:8])
            kwargs.setdefault("image", BUSYBOX_IMAGE)
            return Application(**kwargs)

        def volume_path(self):
            path = os.path.abspath(self.mktemp())
            os.makedirs(path)
            return path

        def full_application(self):
            """An application using every setting a container can have."""
            return self.application(
                environment={"GREETING": "hello world", "EMPTY": "",
                             "WITH_EQUALS": "a=b"},
                ports=[Port(internal_port=80, external_port=18080),
                       Port(internal_port=81, external_port=18081)],
                volume=AttachedVolume(mountpoint="/data",
                                      maximum_size=10 * 1024 * 1024),
                mem_limit=64 * 1024 * 1024,
                cpu_shares=512,
                restart_policy=RestartPolicy("on-failure", 3),
            )

        def assertDockerError(self, failure_or_error, status, text):
            error = getattr(failure_or_error, "value", failure_or_error)
            self.assertIsInstance(error, DockerError)
            self.assertEqual(error.status, status)
            self.assertIn(text, error.message)

        def test_interface(self):
            """The client provides ``IDockerClient``."""
            self.assertTrue(verifyObject(IDockerClient, self.client))

        @inlineCallbacks
        def test_address(self):
            """A running container has an IPv4 address; a stopped one none."""
            import ipaddress
            app = self.application()
            yield self.client.add(app)
            address = yield self.client.address(app.name)
            self.assertEqual(ipaddress.ip_address(address).version, 4)
            yield self.client.stop(app.name, timeout=1)
            error = yield self.assertFailure(self.client.address(app.name),
                                             DockerError)
            self.assertEqual(error.status, 409)
            error = yield self.assertFailure(self.client.address("no-such-app"),
                                             DockerError)
            self.assertEqual(error.status, 404)

        @inlineCallbacks
        def test_list_empty(self):
            """An engine with no flocker containers lists none."""
            units = yield self.client.list()
            self.assertEqual(units, frozenset())

        @inlineCallbacks
        def test_add_running(self):
            """``add`` starts the container and fires with its running unit."""
            app = self.application()
            unit = yield self.client.add(app)
            self.assertEqual(
                (unit.name, unit.image, unit.running, unit.status),
                (app.name, BUSYBOX_IMAGE, True, "running"))
            self.assertEqual(unit.container_name, container_name(app.name))

        @inlineCallbacks
        def test_add_then_list(self):
            """The unit ``add`` returns is what ``list`` reports."""
            unit = yield self.client.add(self.application())
            units = yield self.client.list()
            self.assertEqual(units, frozenset([unit]))

        @inlineCallbacks
        def test_list_several(self):
            """Every added application is listed, by name."""
            first, second = self.application(), self.application()
            yield self.client.add(first)
            yield self.client.add(second)
            units = yield self.client.list()
            self.assertEqual(sorted(u.name for u in units),
                             sorted([first.name, second.name]))

        @inlineCallbacks
        def test_configuration_round_trip(self):
            """
            Environment, ports, volume binding, memory limit, CPU shares and
            restart policy are reported as the application set them.
            """
            app = self.full_application()
            path = self.volume_path()
            yield self.client.add(app, path)
            [unit] = yield self.client.list()
            self.assertEqual(
                (unit.environment, unit.ports, unit.volume.host_path,
                 unit.volume.mountpoint, unit.mem_limit, unit.cpu_shares,
                 unit.restart_policy),
                (app.environment, app.ports, path, "/data", app.mem_limit,
                 app.cpu_shares, RestartPolicy("on-failure", 3)))

        @inlineCallbacks
        def test_defaults_round_trip(self):
            """An application without settings reports none."""
            app = self.application()
            unit = yield self.client.add(app)
            self.assertEqual(
                (unit.environment, unit.ports, unit.volume, unit.mem_limit,
                 unit.cpu_shares, unit.restart_policy),
                ((), frozenset(), None, None, None, RestartPolicy("never")))

        @inlineCallbacks
        def test_restart_always(self):
            """The ``always`` restart policy is applied."""
            app = self.application(restart_policy=RestartPolicy("always"))
            unit = yield self.client.add(app)
            self.assertEqual(unit.restart_policy, RestartPolicy("always"))

        @inlineCallbacks
        def test_digest_label(self):
            """
            The unit carries the digest of the application's configuration,
            which differs once the application changes.
            """
            app = self.full_application()
            path = self.volume_path()
            yield self.client.add(app, path)
            [unit] = yield self.client.list()
            self.assertEqual(unit.config_digest,
                             configuration_digest(app, path))
            changed = evolve(app, environment={"GREETING": "bye"})
            self.assertNotEqual(unit.config_digest,
                                configuration_digest(changed, path))

        @inlineCallbacks
        def test_add_existing_name(self):
            """
            Adding an application whose container exists fails with 409 and
            leaves the existing container alone.
            """
            app = self.application()
            unit = yield self.client.add(app)
            failure = yield self.assertFailure(
                self.client.add(evolve(app, environment={"X": "y"})),
                DockerError)
            self.assertDockerError(failure, 409, "is already in use")
            self.assertIn(unit.container_id, failure.message)
            units = yield self.client.list()
            self.assertEqual(units, frozenset([unit]))

        @inlineCallbacks
        def test_add_missing_image(self):
            """A missing image fails with 404 and no container is left."""
            app = self.application(image=MISSING_IMAGE)
            error = yield self.assertFailure(self.client.add(app), DockerError)
            self.assertDockerError(error, 404, "No such image")
            self.assertIn(MISSING_IMAGE.full_name, error.message)
            units = yield self.client.list()
            self.assertEqual(units, frozenset())

        @inlineCallbacks
        def test_port_already_allocated(self):
            """
            A second running container cannot take an external port: the
            add fails with 500 and leaves no container behind.
            """
            first = self.application(ports=[Port(80, 18280)])
            second = self.application(ports=[Port(8080, 18280)])
            unit = yield self.client.add(first)
            error = yield self.assertFailure(self.client.add(second),
                                             DockerError)
            self.assertDockerError(error, 500, "port is already allocated")
            units = yield self.client.list()
            self.assertEqual(units, frozenset([unit]))

        @inlineCallbacks
        def test_port_released_by_stop(self):
            """A stopped container's external port can be taken."""
            first = self.application(ports=[Port(80, 18281)])
            second = self.application(ports=[Port(80, 18281)])
            yield self.client.add(first)
            yield self.client.stop(first.name, timeout=5)
            unit = yield self.client.add(second)
            self.assertEqual((unit.name, unit.running), (second.name, True))

        @inlineCallbacks
        def test_memory_limit_too_small(self):
            """The engine's lower bound on memory limits is enforced."""
            app = self.application(mem_limit=1024 * 1024)
            error = yield self.assertFailure(self.client.add(app), DockerError)
            self.assertDockerError(error, 400, "Minimum memory limit")
            units = yield self.client.list()
            self.assertEqual(units, frozenset())

        def test_volume_without_path(self):
            """An application with a volume needs a host path."""
            app = self.application(volume=AttachedVolume(mountpoint="/data"))
            return self.assertFailure(self.client.add(app), ValueError)

        def test_path_without_volume(self):
            """A host path without a volume to mount it at is refused."""
            return self.assertFailure(
                self.client.add(self.application(), self.volume_path()),
                ValueError)

        @inlineCallbacks
        def test_stop(self):
            """A stopped container is still listed, as not running."""
            app = self.application()
            yield self.client.add(app)
            yield self.client.stop(app.name, timeout=5)
            [unit] = yield self.client.list()
            self.assertEqual((unit.name, unit.running, unit.status),
                             (app.name, False, "exited"))

        @inlineCallbacks
        def test_stop_stopped(self):
            """Stopping a stopped container succeeds."""
            app = self.application()
            yield self.client.add(app)
            yield self.client.stop(app.name, timeout=5)
            result = yield self.client.stop(app.name, timeout=5)
            self.assertIsNone(result)

        @inlineCallbacks
        def test_stop_unknown(self):
            """Stopping an unknown application fails with 404."""
            error = yield self.assertFailure(
                self.client.stop("nothing-here"), DockerError)
            self.assertDockerError(
                error, 404, "No such container: " + container_name("nothing-here"))

        @inlineCallbacks
        def test_remove_running(self):
            """A running container cannot be removed: 409, still listed."""
            app = self.application()
            unit = yield self.client.add(app)
            error = yield self.assertFailure(self.client.remove(app.name),
                                             DockerError)
            self.assertDockerError(error, 409,
                                   "cannot remove a running container")
            units = yield self.client.list()
            self.assertEqual([u.container_id for u in units],
                             [unit.container_id])

        @inlineCallbacks
        def test_remove_stopped(self):
            """A stopped container is removed and no longer listed."""
            app = self.application()
            yield self.client.add(app)
            yield self.client.stop(app.name, timeout=5)
            yield self.client.remove(app.name)
            units = yield self.client.list()
            self.assertEqual(units, frozenset())

        @inlineCallbacks
        def test_remove_unknown(self):
            """Removing an unknown application fails with 404."""
            error = yield self.assertFailure(
                self.client.remove("nothing-here"), DockerError)
            self.assertDockerError(
                error, 404, "No such container: " + container_name("nothing-here"))

        @inlineCallbacks
        def test_remove_twice(self):
            """A second remove fails exactly as removing an unknown one."""
            app = self.application()
            yield self.client.add(app)
            yield self.client.stop(app.name, timeout=5)
            yield self.client.remove(app.name)
            error = yield self.assertFailure(self.client.remove(app.name),
                                             DockerError)
            self.assertDockerError(error, 404,
                                   "No such container: " + container_name(app.name))

        @inlineCallbacks
        def test_name_reusable_after_remove(self):
            """After a remove, the application can be added again."""
            app = self.application()
            first = yield self.client.add(app)
            yield self.client.stop(app.name, timeout=5)
            yield self.client.remove(app.name)
            second = yield self.client.add(app)
            self.assertNotEqual(first.container_id, second.container_id)
            self.assertTrue(second.running)

        @inlineCallbacks
        def test_image_exists(self):
            """A present image exists, an unknown one does not."""
            present = yield self.client.image_exists(BUSYBOX_IMAGE)
            missing = yield self.client.image_exists(MISSING_IMAGE)
            self.assertEqual((present, missing), (True, False))

        @inlineCallbacks
        def test_pull_unknown(self):
            """
            Pulling an image no registry serves fails with the engine's
            message, and the image stays missing.
            """
            error = yield self.assertFailure(
                self.client.pull_image(MISSING_IMAGE), DockerError)
            self.assertTrue(error.message.strip())
            present = yield self.client.image_exists(MISSING_IMAGE)
            self.assertFalse(present)

        @inlineCallbacks
        def test_ensure_present_image(self):
            """``ensure_image`` does not pull an image that is present."""
            result = yield ensure_image(self.client, BUSYBOX_IMAGE)
            self.assertIsNone(result)

        def test_ensure_missing_image(self):
            """``ensure_image`` fails like the pull when it cannot pull."""
            return self.assertFailure(
                ensure_image(self.client, MISSING_IMAGE), DockerError)

        @inlineCallbacks
        def test_import_image(self):
            """An imported tarball is an image applications can run."""
            from flocker_async.lab.images import (
                BUSYBOX_CHANGES, busybox_tarball)
            tag = DockerImage("flocker-lab/imported", uuid.uuid4().hex[:8])
            tarball = busybox_tarball(os.path.abspath(self.mktemp()))
            yield self.client.import_image(tarball, tag,
                                           changes=BUSYBOX_CHANGES)
            present = yield self.client.image_exists(tag)
            self.assertTrue(present)
            unit = yield self.client.add(self.application(image=tag))
            self.assertEqual((unit.image, unit.running), (tag, True))

        @inlineCallbacks
        def test_import_not_a_tarball(self):
            """Importing something that is not a tarball fails."""
            path = os.path.abspath(self.mktemp())
            with open(path, "wb") as f:
                f.write(b"this is not a tar archive\n" * 100)
            tag = DockerImage("flocker-lab/broken", uuid.uuid4().hex[:8])
            error = yield self.assertFailure(
                self.client.import_image(path, tag), DockerError)
            self.assertDockerError(error, 500, "invalid tar header")
            present = yield self.client.image_exists(tag)
            self.assertFalse(present)

    return IDockerClientTests
