"""
``MemoryDockerClient``: an in-memory engine that behaves like the real one,
errors included, checked by the same contract suite as ``DockerClient``.
"""

from __future__ import annotations

import os
import tarfile
import uuid
from typing import Dict, Iterable, Optional

from attrs import define, evolve
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from flocker_async.model import Application, DockerImage

from ._interfaces import (
    BoundVolume, DockerError, IDockerClient, Unit, configuration_digest,
    container_name)

__all__ = ["MemoryDockerClient"]

# The engine refuses smaller memory limits with this message (HTTP 400).
_MINIMUM_MEMORY = 6 * 1024 * 1024


@define
class _Container:
    container_id: str
    unit: Unit


@implementer(IDockerClient)
class MemoryDockerClient:
    """
    Containers and images kept in dictionaries.

    ``images`` are present from the start; ``registry`` are the images a
    pull can fetch (any other pull fails as the engine's does for an unknown
    repository).
    """

    socket_path = None

    def __init__(self, images: Iterable[DockerImage] = (),
                 registry: Iterable[DockerImage] = ()):
        self._images = set(images)
        self._registry = frozenset(registry)
        self._containers: Dict[str, _Container] = {}

    def _lookup(self, name: str) -> Optional[_Container]:
        return self._containers.get(container_name(name))

    @staticmethod
    def _no_such_container(name):
        return fail(DockerError("No such container: %s"
                                % (container_name(name),), 404))

    def list(self):
        return succeed(frozenset(c.unit for c in self._containers.values()))

    def add(self, application: Application, volume_path=None):
        if (application.volume is None) != (volume_path is None):
            return fail(ValueError(
                "application %r: a volume path is needed exactly when the "
                "application has a volume" % (application.name,)))
        name = container_name(application.name)
        if application.image not in self._images:
            return fail(DockerError("No such image: %s"
                                    % (application.image.full_name,), 404))
        existing = self._containers.get(name)
        if existing is not None:
            return fail(DockerError(
                'Conflict. The container name "/%s" is already in use by '
                'container "%s". You have to remove (or rename) that '
                "container to be able to reuse that name."
                % (name, existing.container_id), 409))
        if application.mem_limit and application.mem_limit < _MINIMUM_MEMORY:
            return fail(DockerError("Minimum memory limit allowed is 6MB",
                                    400))
        allocated = {port.external_port
                     for c in self._containers.values() if c.unit.running
                     for port in c.unit.ports}
        for port in sorted(application.ports):
            if port.external_port in allocated:
                # The engine creates the container, fails to start it, and
                # DockerClient.add removes it again: nothing is left.
                return fail(DockerError(
                    "driver failed programming external connectivity on "
                    "endpoint %s (%s): Bind for 0.0.0.0:%d failed: port is "
                    "already allocated" % (name, uuid.uuid4().hex * 2,
                                           port.external_port), 500))
        volume = None
        if application.volume is not None:
            volume = BoundVolume(host_path=volume_path,
                                 mountpoint=application.volume.mountpoint)
        unit = Unit(
            name=application.name,
            container_id=uuid.uuid4().hex + uuid.uuid4().hex,
            status="running",
            image=application.image,
            config_digest=configuration_digest(application, volume_path),
            environment=application.environment,
            ports=application.ports,
            volume=volume,
            mem_limit=application.mem_limit,
            cpu_shares=application.cpu_shares,
            restart_policy=application.restart_policy,
        )
        self._containers[name] = _Container(unit.container_id, unit)
        return succeed(unit)

    def _set_status(self, container: _Container, status: str):
        container.unit = evolve(container.unit, status=status)

    def address(self, name):
        container = self._lookup(name)
        if container is None:
            return self._no_such_container(name)
        if not container.unit.running:
            return fail(DockerError(
                "container %s is not running, so it has no address"
                % (container_name(name),), 409))
        # Stable per container, from the bridge's range as Docker assigns.
        index = int(container.container_id[:4], 16) % 250 + 2
        return succeed("172.17.0.%d" % (index,))

    def stop(self, name, timeout=10):
        container = self._lookup(name)
        if container is None:
            return self._no_such_container(name)
        self._set_status(container, "exited")
        return succeed(None)

    def remove(self, name):
        container = self._lookup(name)
        if container is None:
            return self._no_such_container(name)
        if container.unit.running:
            return fail(DockerError(
                "You cannot remove a running container %s. Stop the container"
                " before attempting removal or force remove"
                % (container.container_id,), 409))
        del self._containers[container_name(name)]
        return succeed(None)

    def image_exists(self, image: DockerImage):
        return succeed(image in self._images)

    def pull_image(self, image: DockerImage):
        if image not in self._registry:
            return fail(DockerError(
                "pull access denied for %s, repository does not exist or may "
                "require 'docker login'" % (image.repository,), 404))
        self._images.add(image)
        return succeed(None)

    def import_image(self, tarball_path, image: DockerImage, changes=()):
        if not os.path.exists(tarball_path):
            return fail(FileNotFoundError(
                2, "No such file or directory", tarball_path))
        if not tarfile.is_tarfile(tarball_path):
            return fail(DockerError(
                "Error processing tar file(exit status 1): archive/tar: "
                "invalid tar header", 500))
        # Units report only the application's environment, so what ENV
        # changes set in the image needs no modelling here.
        self._images.add(image)
        return succeed(None)

    def simulate_exit(self, name: str):
        """Mark the application's container as exited, as after a crash."""
        container = self._lookup(name)
        if container is None:
            raise KeyError(name)
        self._set_status(container, "exited")
