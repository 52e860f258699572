"""
What crosses the wire between flocker-deploy and a node, and between
nodes: the ``apply`` request and the ``state`` report, as JSON, and how a
node's name becomes the IPv4 address it is reached at.  Both sides use
this one module.

A node never trusts its client: an ``apply`` request is checked as strictly
as flocker-deploy checks the configuration files (the deployment and
applications inside it go through the very same parser), and every other
field is checked against a fixed shape.  Problems are reported like
configuration problems, with the key path in the request.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from attrs import frozen
from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.internet.defer import Deferred

from .config import (
    ConfigurationError,
    NAME_PATTERN,
    Problem,
    applications_to_document,
    configuration_from_objects,
    deployment_to_document,
)
from .model import (
    ApplicationState,
    ClusterState,
    Deployment,
    NodeState,
    VolumeState,
)

__all__ = [
    "WIRE_VERSION",
    "MAX_REQUEST_BYTES",
    "Peer",
    "ApplyRequest",
    "encode_apply",
    "decode_apply",
    "encode_node_state",
    "decode_node_state",
    "retarget_apply",
    "PeerSync",
    "encode_sync",
    "decode_sync",
    "resolve_ipv4",
]

WIRE_VERSION = 1
MAX_REQUEST_BYTES = 4 * 1024 * 1024
_SNAPSHOT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


@frozen
class Peer:
    """Another node as this node reaches it for volume moves."""

    address: str
    ssh_port: int
    node_key: str   # "ssh-ed25519 AAAA..." the key it pushes with
    host_key: str   # "ssh-ed25519 AAAA..." its SSH server's key


@frozen
class PeerSync:
    """What a peer's ``sync`` answers: its deployment's generation, the
    request it persisted (None before its first), and its own state."""

    generation: int
    request: Optional[bytes]
    state: NodeState


def encode_sync(sync: PeerSync, snapshots: Dict[str, List[str]]) -> bytes:
    document = {
        "version": WIRE_VERSION,
        "generation": sync.generation,
        "request": (json.loads(sync.request.decode("utf-8"))
                    if sync.request is not None else None),
        "state": encode_node_state(sync.state, snapshots),
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def decode_sync(data: bytes, source: str = "sync") -> PeerSync:
    """Parse a ``sync`` answer; ``ConfigurationError`` if it is not one.
    The request inside is checked later, as strictly as any ``apply``."""
    p = _Problems(source)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        p.add("", "not a JSON document: %s" % (str(e)[:200],))
        raise ConfigurationError(p.problems)
    if not isinstance(doc, dict) or doc.get("version") != WIRE_VERSION:
        p.add("", "expected a version %d sync answer" % (WIRE_VERSION,))
        raise ConfigurationError(p.problems)
    generation = _whole(doc.get("generation"))
    if generation is None:
        p.add("generation", "expected a whole number from 0")
    request = doc.get("request")
    if request is not None and not isinstance(request, dict):
        p.add("request", "expected an apply request or null")
    state = _decode_node_state(p, "state", doc.get("state"))
    if p.problems or generation is None or state is None:
        raise ConfigurationError(p.problems)
    return PeerSync(generation, None if request is None else
                    json.dumps(request, sort_keys=True).encode("utf-8"), state)


@frozen
class ApplyRequest:
    """
    What a node is told to converge to.  ``generation`` orders deployments
    cluster-wide (flocker-deploy: one more than any reachable node has);
    ``down`` are the nodes the operator declared dead for this deployment.
    """

    node: str
    deploy_id: str
    deployment: Deployment
    cluster: ClusterState
    peers: Tuple[Peer, ...]
    generation: int = 0
    down: Tuple[str, ...] = ()
    # The highest ownership epoch any live node saw claimed, per volume.
    epoch_floor: Tuple[Tuple[str, int], ...] = ()


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.problems: List[Problem] = []

    def add(self, path: str, message: str):
        self.problems.append(Problem(self.source, path, message))


def _ipv4(value: Any) -> Optional[str]:
    try:
        return str(ipaddress.IPv4Address(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _public_key_line(value: Any) -> Optional[str]:
    if not isinstance(value, str) or len(value) > 16384 or "\n" in value:
        return None
    try:
        key = keys.Key.fromString(value.encode("ascii"))
    except Exception:
        return None
    if not key.isPublic():
        return None
    return key.toString("openssh").decode("ascii")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(value: Any) -> Optional[int]:
    """``value`` if it is a whole number that JSON carries exactly, else None."""
    if _is_int(value) and 0 <= value < 2 ** 53:
        return value
    return None


# --- state --------------------------------------------------------------------

def encode_node_state(state: NodeState, snapshots: Dict[str, List[str]] = {},
                      extra: Optional[dict] = None) -> dict:
    document = {
        "version": WIRE_VERSION,
        "address": state.hostname,
        "applications": [
            {"name": a.name, "running": a.running, "digest": a.digest}
            for a in sorted(state.applications, key=lambda a: a.name)],
        "volumes": [
            {"name": v.name, "owner": v.owner, "writable": v.writable,
             "epoch": v.epoch,
             "snapshots": list(snapshots.get(v.name, v.snapshots))}
            for v in sorted(state.volumes, key=lambda v: v.name)],
    }
    if extra:
        document.update(extra)
    return document


def _list(p: _Problems, path: str, doc: dict, key: str) -> list:
    """``doc[key]`` if it is a list (missing: empty), else a problem."""
    value = doc.get(key, [])
    if not isinstance(value, list):
        p.add(path + "." + key, "expected a list")
        return []
    return value


def _decode_node_state(p: _Problems, path: str, doc: Any) -> Optional[NodeState]:
    if not isinstance(doc, dict):
        p.add(path, "expected a node state mapping")
        return None
    before = len(p.problems)
    address = _ipv4(doc.get("address"))
    if address is None:
        p.add(path + ".address", "expected an IPv4 address")
    apps, volumes = [], []
    for i, app in enumerate(_list(p, path, doc, "applications")):
        where = "%s.applications[%d]" % (path, i)
        if (not isinstance(app, dict) or not isinstance(app.get("name"), str)
                or not NAME_PATTERN.match(app["name"])
                or not isinstance(app.get("running"), bool)
                or not (app.get("digest") is None or (
                    isinstance(app.get("digest"), str) and len(app["digest"]) <= 128))):
            p.add(where, "expected {name, running, digest}")
            continue
        apps.append(ApplicationState(app["name"], app["running"], app.get("digest")))
    for i, vol in enumerate(_list(p, path, doc, "volumes")):
        where = "%s.volumes[%d]" % (path, i)
        if (not isinstance(vol, dict) or not isinstance(vol.get("name"), str)
                or not NAME_PATTERN.match(vol["name"])
                or not (vol.get("owner") is None or _ipv4(vol.get("owner")))
                or not isinstance(vol.get("writable"), bool)
                or not (_is_int(vol.get("epoch", 0)) and 0 <= vol.get("epoch", 0) < 2 ** 53)
                or not isinstance(vol.get("snapshots", []), list)
                or not all(isinstance(s, str) and 0 < len(s) <= 128
                           and set(s) <= _SNAPSHOT_CHARS
                           for s in vol.get("snapshots", []))):
            p.add(where, "expected {name, owner, writable, epoch, snapshots}")
            continue
        volumes.append(VolumeState(vol["name"], vol.get("owner"), vol["writable"],
                                   tuple(vol.get("snapshots", [])),
                                   vol.get("epoch", 0)))
    if len(p.problems) > before or address is None:
        return None
    return NodeState(address, apps, volumes)


def decode_node_state(doc: Any, source: str = "state") -> NodeState:
    p = _Problems(source)
    state = _decode_node_state(p, "", doc)
    if p.problems or state is None:
        raise ConfigurationError(p.problems)
    return state


# --- apply --------------------------------------------------------------------

def encode_apply(node: str, deploy_id: str, deployment: Deployment,
                 cluster: ClusterState, peers, generation: int = 0,
                 down=(), epoch_floor: Optional[Dict[str, int]] = None) -> bytes:
    applications = [app for _, app in deployment.applications()]
    document = {
        "version": WIRE_VERSION,
        "node": node,
        "deploy_id": deploy_id,
        "deployment": deployment_to_document(deployment),
        "applications": applications_to_document(applications),
        "cluster": [encode_node_state(n) for n in
                    sorted(cluster.nodes, key=lambda n: n.hostname)],
        "peers": [{"address": peer.address, "ssh_port": peer.ssh_port,
                   "node_key": peer.node_key, "host_key": peer.host_key}
                  for peer in sorted(peers, key=lambda peer: peer.address)],
        "generation": generation,
        "down": sorted(down),
        "epoch_floor": dict(sorted((epoch_floor or {}).items())),
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def retarget_apply(data: bytes, node: str) -> bytes:
    """The same request, addressed to ``node`` (a peer's deployment that
    this node adopts)."""
    document = json.loads(data.decode("utf-8"))
    document["node"] = node
    return json.dumps(document, sort_keys=True).encode("utf-8")


_APPLY_KEYS = {"version", "node", "deploy_id", "deployment", "applications",
               "cluster", "peers"}
_OPTIONAL_APPLY_KEYS = {"generation", "down", "epoch_floor"}


# A deploy's identifier: ASCII only (str.isalnum takes any script).
DEPLOY_ID = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def decode_apply(data: bytes, source: str = "apply") -> ApplyRequest:
    """Parse and check an ``apply`` request; ``ConfigurationError`` lists
    every problem."""
    p = _Problems(source)

    def fail(message, path=""):
        p.add(path, message)
        raise ConfigurationError(p.problems)

    if len(data) > MAX_REQUEST_BYTES:
        fail("request larger than %d bytes" % (MAX_REQUEST_BYTES,))
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail("not a JSON document: %s" % (str(e)[:200],))
    if not isinstance(doc, dict):
        fail("expected a JSON object")
    for key in sorted(set(doc) - _APPLY_KEYS - _OPTIONAL_APPLY_KEYS, key=str):
        p.add(str(key)[:64], "unknown key")
    for key in sorted(_APPLY_KEYS - set(doc)):
        p.add("", "missing required key %r" % (key,))
    if p.problems:
        raise ConfigurationError(p.problems)
    if doc["version"] != WIRE_VERSION or isinstance(doc["version"], bool):
        fail("unsupported request version; this node speaks version %d"
             % (WIRE_VERSION,), "version")
    node = _ipv4(doc["node"])
    if node is None:
        p.add("node", "expected this node's IPv4 address")
    deploy_id = doc["deploy_id"]
    if not isinstance(deploy_id, str) or not DEPLOY_ID.match(deploy_id):
        p.add("deploy_id", "expected an identifier of up to 64 letters, digits, - and _")
    deployment = None
    try:
        deployment = configuration_from_objects(
            doc["deployment"], doc["applications"],
            source + ": deployment", source + ": applications")
    except ConfigurationError as e:
        p.problems.extend(e.problems)
    except RecursionError:
        p.add("applications", "nested too deeply")
    if deployment is not None:
        for n in deployment.nodes:
            if _ipv4(n.hostname) is None:
                p.add("deployment.nodes", "node %s: nodes are named by IPv4 address "
                      "on the wire" % (n.hostname,))
        if node is not None and deployment.node_named(node) is None:
            p.add("node", "%s is not a node of the deployment" % (node,))
    nodes = []
    if not isinstance(doc["cluster"], list):
        p.add("cluster", "expected a list of node states")
    else:
        for i, entry in enumerate(doc["cluster"]):
            state = _decode_node_state(p, "cluster[%d]" % (i,), entry)
            if state is not None:
                nodes.append(state)
        if len({n.hostname for n in nodes}) != len(nodes):
            p.add("cluster", "a node is listed twice")
    peers = []
    if not isinstance(doc["peers"], list):
        p.add("peers", "expected a list of peers")
    else:
        for i, entry in enumerate(doc["peers"]):
            where = "peers[%d]" % (i,)
            if not isinstance(entry, dict) or set(entry) != {
                    "address", "ssh_port", "node_key", "host_key"}:
                p.add(where, "expected {address, ssh_port, node_key, host_key}")
                continue
            address = _ipv4(entry["address"])
            node_key = _public_key_line(entry["node_key"])
            host_key = _public_key_line(entry["host_key"])
            port = entry["ssh_port"]
            if address is None:
                p.add(where + ".address", "expected an IPv4 address")
            if not _is_int(port) or not 1 <= port <= 65535:
                p.add(where + ".ssh_port", "expected a port number from 1 to 65535")
            if node_key is None:
                p.add(where + ".node_key", "expected an SSH public key line")
            if host_key is None:
                p.add(where + ".host_key", "expected an SSH public key line")
            if (address is not None and node_key is not None and host_key is not None
                    and _is_int(port)):
                peers.append(Peer(address, port, node_key, host_key))
    generation = _whole(doc.get("generation", 0))
    if generation is None:
        p.add("generation", "expected a whole number from 0")
    given = doc.get("down", [])
    if not isinstance(given, list) or len(given) > 1000:
        p.add("down", "expected a list of IPv4 addresses")
        given = []
    down = []
    for i, entry in enumerate(given):
        address = _ipv4(entry)
        if address is None:
            p.add("down[%d]" % (i,), "expected an IPv4 address")
        else:
            down.append(address)
    floor = doc.get("epoch_floor", {})
    epoch_floor = []
    if not isinstance(floor, dict) or len(floor) > 100000:
        p.add("epoch_floor", "expected a mapping of volume name to epoch")
        floor = {}
    for name, epoch in sorted(floor.items(), key=lambda item: str(item[0])):
        if (not isinstance(name, str) or not NAME_PATTERN.match(name)
                or _whole(epoch) is None):
            p.add("epoch_floor", "expected volume names mapped to whole numbers")
            break
        epoch_floor.append((name, epoch))
    if deployment is not None:
        for n in deployment.nodes:
            if n.hostname in down and n.applications:
                p.add("deployment.nodes", "node %s is declared down but "
                      "applications are placed on it" % (n.hostname,))
    if p.problems or node is None or deployment is None or generation is None:
        raise ConfigurationError(p.problems)
    return ApplyRequest(node=node, deploy_id=deploy_id, deployment=deployment,
                        cluster=ClusterState(nodes), peers=tuple(peers),
                        generation=generation, down=tuple(sorted(set(down))),
                        epoch_floor=tuple(epoch_floor))


def resolve_ipv4(reactor, hostname: str) -> Deferred:
    """An IPv4 address for a node's host name (IP addresses as they are)."""
    try:
        return defer.succeed(str(ipaddress.IPv4Address(hostname)))
    except ValueError:
        return reactor.resolve(hostname)
