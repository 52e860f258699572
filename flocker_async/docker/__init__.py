"""
The Docker backend: ``IDockerClient``, the real ``DockerClient`` (Engine API
over the UNIX socket) and ``MemoryDockerClient`` for tests.
"""

from ._client import DEFAULT_SOCKET_PATH, DockerClient
from ._interfaces import (
    APPLICATION_LABEL,
    CONTAINER_PREFIX,
    DIGEST_LABEL,
    BoundVolume,
    DockerError,
    IDockerClient,
    Unit,
    configuration_digest,
    container_name,
    ensure_image,
)
from ._memory import MemoryDockerClient

__all__ = [
    "IDockerClient",
    "DockerClient",
    "MemoryDockerClient",
    "DockerError",
    "Unit",
    "BoundVolume",
    "container_name",
    "configuration_digest",
    "ensure_image",
    "CONTAINER_PREFIX",
    "APPLICATION_LABEL",
    "DIGEST_LABEL",
    "DEFAULT_SOCKET_PATH",
]
