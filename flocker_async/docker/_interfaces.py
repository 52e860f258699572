"""
The Docker backend's interface and the values it deals in.

What a container is named, which labels mark it as ours and how its
configuration digest is computed are defined here, once, so the real client
and the in-memory fake cannot disagree about them.
"""

from __future__ import annotations

import hashlib
import json
from typing import FrozenSet, Iterable, Optional, Tuple

from attrs import field, frozen, validators
from zope.interface import Attribute, Interface

from flocker_async.model import Application, DockerImage, Port, RestartPolicy

__all__ = [
    "IDockerClient",
    "DockerError",
    "Unit",
    "BoundVolume",
    "CONTAINER_PREFIX",
    "APPLICATION_LABEL",
    "DIGEST_LABEL",
    "container_name",
    "configuration_digest",
    "ensure_image",
]

# Every container we create is named CONTAINER_PREFIX + application name and
# carries both labels; containers without APPLICATION_LABEL are never touched.
CONTAINER_PREFIX = "flocker-"
APPLICATION_LABEL = "org.flocker-async.application"
DIGEST_LABEL = "org.flocker-async.config-digest"

# Bumped whenever the digest's input changes shape, so old containers read
# as changed rather than colliding with a new meaning.
_DIGEST_VERSION = 1


class DockerError(Exception):
    """
    The engine refused a request, or could not be reached.

    ``message`` is the engine's own text (or why it could not be reached);
    ``status`` is the HTTP status, ``None`` when no response arrived.
    """

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return "Docker engine error (HTTP %d): %s" % (self.status, self.message)


def container_name(application_name: str) -> str:
    """The Docker container name used for an application."""
    return CONTAINER_PREFIX + application_name


def configuration_digest(
    application: Application, volume_path: Optional[str] = None
) -> str:
    """
    A sha256 hex digest of everything in ``application`` that shapes its
    container, plus the volume's host path.  Equal digests mean the running
    container need not be touched; ``maximum_size`` is left out because it is
    the dataset's quota, not a container setting.
    """
    volume = application.volume
    canonical = {
        "version": _DIGEST_VERSION,
        "name": application.name,
        "image": application.image.full_name,
        "environment": [list(pair) for pair in application.environment],
        "ports": [[p.internal_port, p.external_port]
                  for p in sorted(application.ports)],
        "links": [[l.local_port, l.remote_port, l.alias]
                  for l in sorted(application.links)],
        "volume": None if volume is None else {
            "mountpoint": volume.mountpoint,
            "host_path": volume_path,
        },
        "mem_limit": application.mem_limit,
        "cpu_shares": application.cpu_shares,
        "restart_policy": [application.restart_policy.name,
                           application.restart_policy.maximum_retry_count],
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@frozen
class BoundVolume:
    """A host directory bind-mounted into a container."""

    host_path: str = field(validator=validators.instance_of(str))
    mountpoint: str = field(validator=validators.instance_of(str))


def _port_set(ports: Iterable[Port]) -> FrozenSet[Port]:
    # A typed converter: mypy cannot infer Unit's argument from ``frozenset``.
    return frozenset(ports)


@frozen
class Unit:
    """
    A flocker-managed container as the engine reports it.

    ``environment`` is what the application asked for: variables the image
    itself sets are left out.  ``config_digest`` is the label written at
    creation, compared with ``configuration_digest`` to tell a changed
    application from an unchanged one.
    """

    name: str = field(validator=validators.instance_of(str))
    container_id: str = field(validator=validators.instance_of(str))
    status: str = field(validator=validators.instance_of(str))
    image: DockerImage = field(validator=validators.instance_of(DockerImage))
    config_digest: Optional[str] = None
    environment: Tuple[Tuple[str, str], ...] = field(
        default=(), converter=lambda pairs: tuple(sorted(pairs)))
    ports: FrozenSet[Port] = field(default=frozenset(), converter=_port_set)
    volume: Optional[BoundVolume] = None
    mem_limit: Optional[int] = None
    cpu_shares: Optional[int] = None
    restart_policy: RestartPolicy = RestartPolicy("never")

    @property
    def running(self) -> bool:
        """Whether the container's process is up (or being restarted)."""
        return self.status in ("running", "restarting", "paused")

    @property
    def container_name(self) -> str:
        return container_name(self.name)


class IDockerClient(Interface):
    """
    The Docker engine of one node, as far as flocker needs it.

    Every method returns a Deferred; failures are ``DockerError`` carrying
    the engine's message and HTTP status, the same for real and fake.
    """

    def list():
        """
        Fire with a ``frozenset`` of ``Unit``, one for every flocker-managed
        container, running or not.
        """

    def add(application, volume_path=None):
        """
        Create and start the container for ``application`` (``Application``)
        and fire with its ``Unit``.  ``volume_path`` is the host directory
        bound at ``application.volume.mountpoint``.  Fails (leaving no
        container behind) if the image is missing, a container of that name
        exists, or the container cannot start.
        """

    def stop(name, timeout=10):
        """
        Stop the application's container: SIGTERM, then SIGKILL after
        ``timeout`` seconds.  Stopping a stopped container succeeds; an
        unknown one fails with status 404.
        """

    def remove(name):
        """
        Remove the application's stopped container.  A running one fails
        with status 409, an unknown one with 404.
        """

    def address(name):
        """
        Fire with the IPv4 address of the application's running container
        on the engine's bridge network (where the node itself reaches it,
        bypassing the published ports).  A stopped container fails with
        status 409, an unknown one with 404.
        """

    def image_exists(image):
        """Fire with whether ``image`` (``DockerImage``) is present."""

    def pull_image(image):
        """
        Pull ``image`` from its registry; fails with the engine's message
        when it cannot.
        """

    def import_image(tarball_path, image, changes=()):
        """
        Create ``image`` from a root filesystem tarball on the local disk,
        applying Dockerfile ``changes`` such as ``'CMD ["sh"]'``.
        """

    socket_path = Attribute("Where the engine listens (``None`` for fakes).")


def ensure_image(client, image):
    """Pull ``image`` through ``client`` unless it is already present."""

    def pull_if_missing(present):
        if not present:
            return client.pull_image(image)
        return None

    return client.image_exists(image).addCallback(pull_if_missing)
