"""
Immutable values describing what should run where.

Everything here is a frozen attrs class: values are compared by content,
hashable, and safe to share between the parser, the convergence logic and
the SSH layer.  Validation of user input lives in ``flocker_async.config``;
the validators here only guard the types so a programming error is caught
where it is made.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, Mapping, Optional, Tuple

from attrs import field, frozen, validators

__all__ = [
    "DockerImage",
    "Port",
    "Link",
    "AttachedVolume",
    "RestartPolicy",
    "RESTART_NEVER",
    "RESTART_ALWAYS",
    "Application",
    "Node",
    "Deployment",
    "DEFAULT_REPLICATION_INTERVAL",
    "link_env_prefix",
    "ApplicationState",
    "VolumeState",
    "NodeState",
    "ClusterState",
]


# Typed converters: mypy's attrs plugin cannot read a bare ``frozenset``.
def _ports(value: Iterable["Port"]) -> FrozenSet["Port"]:
    return frozenset(value)


def _links(value: Iterable["Link"]) -> FrozenSet["Link"]:
    return frozenset(value)


def _applications(value: Iterable["Application"]) -> FrozenSet["Application"]:
    return frozenset(value)


def _nodes(value: Iterable["Node"]) -> FrozenSet["Node"]:
    return frozenset(value)


def _application_states(value: Iterable["ApplicationState"]
                        ) -> FrozenSet["ApplicationState"]:
    return frozenset(value)


def _volume_states(value: Iterable["VolumeState"]) -> FrozenSet["VolumeState"]:
    return frozenset(value)


def _node_states(value: Iterable["NodeState"]) -> FrozenSet["NodeState"]:
    return frozenset(value)


def _strings(value: Iterable[str]) -> Tuple[str, ...]:
    return tuple(value)


def _frozen_pairs(value) -> Tuple[Tuple[str, str], ...]:
    """Turn a mapping (or pairs) into a sorted tuple of pairs."""
    if isinstance(value, Mapping):
        value = value.items()
    return tuple(sorted((str(k), str(v)) for k, v in value))


@frozen
class DockerImage:
    """A Docker image reference, ``repository[:tag]``."""

    repository: str = field(validator=validators.instance_of(str))
    tag: str = field(default="latest", validator=validators.instance_of(str))

    @property
    def full_name(self) -> str:
        return f"{self.repository}:{self.tag}"

    @classmethod
    def from_string(cls, reference: str) -> "DockerImage":
        """Split ``repo[:tag]``; a colon before the last slash is a port."""
        slash = reference.rfind("/")
        colon = reference.rfind(":")
        if colon > slash:
            return cls(repository=reference[:colon], tag=reference[colon + 1:])
        return cls(repository=reference)

    def __str__(self) -> str:
        return self.full_name


@frozen(order=True)
class Port:
    """A container port published on every node as ``external_port``."""

    internal_port: int = field(validator=validators.instance_of(int))
    external_port: int = field(validator=validators.instance_of(int))


@frozen(order=True)
class Link:
    """
    A link to another application: inside the container ``alias`` reaches
    ``remote_port`` of the cluster through ``local_port``.
    """

    local_port: int = field(validator=validators.instance_of(int))
    remote_port: int = field(validator=validators.instance_of(int))
    alias: str = field(validator=validators.instance_of(str))


# Seconds between pushes of a volume to its standbys, unless the volume says.
DEFAULT_REPLICATION_INTERVAL = 60.0


def _optional_seconds(value):
    """Whole seconds given as an int are stored as a float, so values compare."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@frozen
class AttachedVolume:
    """
    The application's data volume: where it is mounted, its size limit, and
    how often it is pushed to its standbys (None: the default).
    """

    mountpoint: str = field(validator=validators.instance_of(str))
    maximum_size: Optional[int] = field(
        default=None, validator=validators.optional(validators.instance_of(int))
    )
    replication_interval: Optional[float] = field(
        default=None, converter=_optional_seconds,
        validator=validators.optional(validators.instance_of(float)),
    )

    @property
    def effective_replication_interval(self) -> float:
        if self.replication_interval is None:
            return DEFAULT_REPLICATION_INTERVAL
        return self.replication_interval


@frozen
class RestartPolicy:
    """Docker's restart policy: ``never``, ``always`` or ``on-failure``."""

    name: str = field(validator=validators.in_(("never", "always", "on-failure")))
    maximum_retry_count: Optional[int] = field(
        default=None, validator=validators.optional(validators.instance_of(int))
    )


RESTART_NEVER = RestartPolicy("never")
RESTART_ALWAYS = RestartPolicy("always")


@frozen
class Application:
    """One container with its configuration and, optionally, its volume."""

    name: str = field(validator=validators.instance_of(str))
    image: DockerImage = field(validator=validators.instance_of(DockerImage))
    ports: FrozenSet[Port] = field(default=frozenset(), converter=_ports)
    links: FrozenSet[Link] = field(default=frozenset(), converter=_links)
    environment: Tuple[Tuple[str, str], ...] = field(
        default=(), converter=_frozen_pairs
    )
    volume: Optional[AttachedVolume] = field(
        default=None,
        validator=validators.optional(validators.instance_of(AttachedVolume)),
    )
    mem_limit: Optional[int] = field(
        default=None, validator=validators.optional(validators.instance_of(int))
    )
    cpu_shares: Optional[int] = field(
        default=None, validator=validators.optional(validators.instance_of(int))
    )
    restart_policy: RestartPolicy = field(
        default=RESTART_NEVER, validator=validators.instance_of(RestartPolicy)
    )

    @property
    def environment_dict(self) -> dict:
        return dict(self.environment)


def link_env_prefix(alias: str) -> str:
    """The environment variable prefix Docker-style links use for ``alias``."""
    return alias.upper().replace("-", "_")


@frozen
class Node:
    """A host, named by address or host name, and what should run on it."""

    hostname: str = field(validator=validators.instance_of(str))
    applications: FrozenSet[Application] = field(
        default=frozenset(), converter=_applications
    )

    def application_named(self, name: str) -> Optional[Application]:
        for app in self.applications:
            if app.name == name:
                return app
        return None


def _frozen_standby(value) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """A mapping (or pairs) of application name to node names, as sorted pairs;
    an application with no standby node is left out, so both spellings compare
    equal."""
    if isinstance(value, Mapping):
        value = value.items()
    pairs = []
    for name, nodes in value:
        if isinstance(nodes, str):
            raise TypeError("standby nodes of %s must be a sequence of node names, "
                            "not a string" % (name,))
        if nodes:
            pairs.append((str(name), tuple(str(node) for node in nodes)))
    if len(set(name for name, _ in pairs)) != len(pairs):
        raise ValueError("an application is given standby nodes twice")
    return tuple(sorted(pairs))


@frozen
class Deployment:
    """
    The desired state of the whole cluster: what runs on each node, and which
    other nodes keep a replica of each application's volume (``standby``,
    application name to node names in the order given).
    """

    nodes: FrozenSet[Node] = field(default=frozenset(), converter=_nodes)
    standby: Tuple[Tuple[str, Tuple[str, ...]], ...] = field(
        default=(), converter=_frozen_standby)

    def standbys_of(self, application_name: str) -> Tuple[str, ...]:
        """The nodes that keep a replica of the application's volume."""
        return dict(self.standby).get(application_name, ())

    def node_named(self, hostname: str) -> Optional[Node]:
        for node in self.nodes:
            if node.hostname == hostname:
                return node
        return None

    def applications(self):
        """Every deployed application, with the node it runs on."""
        for node in sorted(self.nodes, key=lambda n: n.hostname):
            for app in sorted(node.applications, key=lambda a: a.name):
                yield node, app

    def node_for(self, application_name: str) -> Optional[Node]:
        for node in self.nodes:
            if node.application_named(application_name) is not None:
                return node
        return None


# --- what discovery finds ------------------------------------------------------


@frozen
class ApplicationState:
    """A container this node runs (or ran) for an application."""

    name: str
    running: bool
    digest: Optional[str] = None


@frozen
class VolumeState:
    """
    A copy of an application's volume on a node.  ``owner`` is the node
    recorded as owner on this copy; the copy is the live one only when it
    names its own node and is writable.  ``epoch`` is the ownership epoch
    recorded with it: every handoff and take-over raises it, so of two
    copies that both claim to be live, the one with the higher epoch is.
    ``snapshots`` are its snapshot names, oldest first.
    """

    name: str
    owner: Optional[str]
    writable: bool
    snapshots: Tuple[str, ...] = field(default=(), converter=_strings)
    epoch: int = 0


@frozen
class NodeState:
    """What one node holds and runs, as it reported."""

    hostname: str
    applications: FrozenSet[ApplicationState] = field(
        default=frozenset(), converter=_application_states)
    volumes: FrozenSet[VolumeState] = field(default=frozenset(),
                                            converter=_volume_states)

    def application(self, name: str) -> Optional[ApplicationState]:
        for app in self.applications:
            if app.name == name:
                return app
        return None

    def volume(self, name: str) -> Optional[VolumeState]:
        for volume in self.volumes:
            if volume.name == name:
                return volume
        return None

    def claims(self, name: str) -> bool:
        """This node's copy of ``name`` says this node owns it."""
        volume = self.volume(name)
        return volume is not None and volume.owner == self.hostname


@frozen
class ClusterState:
    """The last known state of every node."""

    nodes: FrozenSet[NodeState] = field(default=frozenset(), converter=_node_states)

    def node(self, hostname: str) -> Optional[NodeState]:
        for node in self.nodes:
            if node.hostname == hostname:
                return node
        return None

    def with_node(self, state: NodeState) -> "ClusterState":
        """A copy with ``state`` replacing what was known of its node."""
        return ClusterState(
            [n for n in self.nodes if n.hostname != state.hostname] + [state])

    def owner_of(self, volume_name: str, down: Iterable[str] = ()) -> Optional[str]:
        """
        The node holding the live copy of a volume: the one whose copy names
        itself as owner, preferring the highest ownership epoch (a node that
        was taken over from and returns still claims its old copy), then a
        writable copy (during a handoff the source's read-only copy still
        names the source until ``acquire``).  Claimants in ``down`` (nodes
        the operator declared dead) lose to any other.
        """
        claimants = []
        for node in self.nodes:
            volume = node.volume(volume_name)
            if volume is not None and node.claims(volume_name):
                claimants.append((-volume.epoch, not volume.writable, node.hostname))
        # A node declared down never wins over one that is not, whatever
        # its epoch (it may have raised it while no one heard from it).
        alive = [c for c in claimants if c[2] not in set(down)]
        claimants = alive or claimants
        return sorted(claimants)[0][2] if claimants else None
