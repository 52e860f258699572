"""
Hostile input at the node: strangers' keys, keys in the wrong role, and
malformed, oversized, deeply nested or wrongly typed ``apply`` requests and
``receive`` streams.  Each is refused cleanly, nothing is persisted or
changed, and the daemon keeps serving.

The SSH layer's own refusals (shell, pty, env, forwarding, unknown
commands, passwords) are in test_ssh.py; here the real node command set is
served by the in-process loopback nodes of test_node_service.py.
"""

import copy
import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flocker_async import deploy as deploy_lib
from flocker_async.changes import calculate_changes
from flocker_async.config import ConfigurationError
from flocker_async.model import ClusterState, Deployment, Node, NodeState
from flocker_async.wire import MAX_REQUEST_BYTES, Peer, decode_apply, encode_apply
from flocker_async.ssh import (
    PEER,
    AuthenticationRefused,
    RemoteCommandFailed,
    SSHClient,
    fingerprint,
    generate_key,
    public_key_line,
)
from flocker_async.volume import VolumeName

from .test_node_plugin import UNIT, parse_unit
from .test_node_service import A, B, WEB, InMemoryNodes
from .test_ssh import RawSession

NOT_ALLOWED = 126  # the SSH server's status for a command refused to a role


def valid_request(node=A) -> dict:
    """A well-formed apply request document for ``node``."""
    key = generate_key()
    peers = [Peer(address, 4522, public_key_line(key), public_key_line(key))
             for address in (A, B)]
    deployment = Deployment(nodes=[Node(A, [WEB]), Node(B, [])])
    cluster = ClusterState([NodeState(A), NodeState(B)])
    return json.loads(encode_apply(node, "d1", deployment, cluster, peers))


_VALID = valid_request()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


def _paths(value, path=()):
    """Every path (tuple of keys and indexes) into a JSON document."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, path + (index,))


_VALID_PATHS = [p for p in _paths(_VALID) if p]


def _replace(document, path, value):
    document = copy.deepcopy(document)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


@st.composite
def mutated_requests(draw):
    """A valid request with one value anywhere in it replaced by any JSON
    value (wrong types, wrong shapes, missing pieces)."""
    path = draw(st.sampled_from(_VALID_PATHS))
    return json.dumps(_replace(_VALID, path, draw(json_values))).encode("utf-8")


class DecodeApplyTests(SynchronousTestCase):
    """``decode_apply`` refuses anything but a well-formed request with a
    ``ConfigurationError`` (never another exception), and what it accepts
    can be converged on."""

    def assert_refused_or_usable(self, data):
        try:
            request = decode_apply(data)
        except ConfigurationError as e:
            self.assertTrue(e.problems)
            return
        calculate_changes(request.node, request.deployment, request.cluster,
                          lambda app: "digest")

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutated_requests())
    def test_one_value_wrong(self, data):
        self.assert_refused_or_usable(data)

    @settings(max_examples=200, deadline=None)
    @given(json_values)
    def test_any_json_document(self, value):
        self.assert_refused_or_usable(json.dumps(value).encode("utf-8"))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=512))
    def test_any_bytes(self, data):
        self.assert_refused_or_usable(data)

    def test_deeply_nested(self):
        for where in ("applications", "deployment", "cluster", "peers"):
            deep = _replace(_VALID, (where,), None)
            text = json.dumps(deep).replace("null", "[" * 100000 + "]" * 100000)
            self.assertRaises(ConfigurationError, decode_apply, text.encode())

    def test_oversized(self):
        data = json.dumps(_replace(_VALID, ("deploy_id",), "x" * MAX_REQUEST_BYTES))
        error = self.assertRaises(ConfigurationError, decode_apply, data.encode())
        self.assertIn("larger than", str(error))

    def test_the_valid_request_is_accepted(self):
        self.assertEqual(decode_apply(json.dumps(_VALID).encode()).node, A)


HOSTILE_APPLY = {
    "not json": b"\x00\xff{{{",
    "not an object": b"[1, 2, 3]",
    "wrong types": json.dumps(dict(_VALID, cluster="everything", peers={"a": 1},
                                   version=True)).encode(),
    "deeply nested": json.dumps(_replace(_VALID, ("applications",), None)).replace(
        "null", "[" * 50000 + "]" * 50000).encode(),
    "another node's": json.dumps(valid_request(B)).encode(),
    "hostile names": json.dumps(_replace(
        _VALID, ("deployment", "nodes", A), ["web; rm -rf /"])).encode(),
    "oversized": b" " * (MAX_REQUEST_BYTES + 1),
}


class HostileClientTests(InMemoryNodes, SynchronousTestCase):
    """Over conch SSH (in memory), against the node command set."""

    def assert_still_serving(self, address=A):
        result = self.drive(self.client.run(address, self.port, ["version"]))
        self.assertTrue(result.stdout.startswith(b"flocker-node "))

    def test_hostile_apply_refused(self):
        """Each hostile request: exit status 1, a last line saying
        "invalid" with the problems, nothing saved or changed, and the
        daemon answers the next command."""
        node = self.nodes[A]
        for what, data in sorted(HOSTILE_APPLY.items()):
            error = self.assertFails(
                self.client.run(A, self.port, ["apply"], stdin=data),
                RemoteCommandFailed)
            self.assertEqual(error.result.status, 1, what)
            self.assertTrue(error.result.stdout, what)
            last = json.loads(error.result.stdout.decode().splitlines()[-1])
            self.assertEqual(last["result"], "invalid", what)
            self.assertTrue(last["errors"], what)
            self.assertIsNone(node.store.load(), what)
            self.assertIsNone(node.convergence.request, what)
            self.assertEqual(self.drive(node.docker.list()), frozenset(), what)
            self.assert_still_serving()

    def test_peer_key_cannot_run_operator_commands(self):
        peer = generate_key()
        self.nodes[A].authorizer.set_keys(PEER, [peer])
        client = self.client_with(peer)
        for argv in (["apply"], ["state"], ["lease", "d1"]):
            error = self.assertFails(
                client.run(A, self.port, argv, stdin=json.dumps(_VALID).encode()),
                RemoteCommandFailed)
            self.assertEqual(error.result.status, NOT_ALLOWED, argv)
            self.assertIn("not permitted for the peer role", error.result.stderr_text, argv)
        self.assertIsNone(self.nodes[A].store.load())
        self.assertIsNone(self.nodes[A].convergence.lease)
        # What a peer may run still works for it.
        result = self.drive(client.run(A, self.port, ["version"]))
        self.assertTrue(result.stdout.startswith(b"flocker-node "))

    def test_operator_key_cannot_run_peer_commands(self):
        self.deploy({A: [WEB], B: []})
        for argv in (["receive", "web"], ["receive", "--replace", "web"],
                     ["acquire", "web"]):
            error = self.assertFails(
                self.client.run(B, self.port, argv, stdin=b"garbage"),
                RemoteCommandFailed)
            self.assertEqual(error.result.status, NOT_ALLOWED, argv)
        # Nothing was received on B, and A still owns the volume.
        self.assertEqual(self.drive(self.nodes[B].pool.enumerate()), [])
        volume = self.drive(self.nodes[A].pool.get(VolumeName("web")))
        self.assertEqual((volume.owner, volume.read_only), (A, False))

    def test_stranger_key_refused(self):
        """A key in no role (not in operator_keys, not a peer): the deploy
        fails naming the node and our key's fingerprint; nothing runs."""
        stranger = generate_key()
        deployment = Deployment(nodes=[Node(A, [WEB])])
        error = self.assertFails(deploy_lib.deploy(
            self.net, self.client_with(stranger), deployment, self.port,
            lambda n, e: None), deploy_lib.DeployFailed)
        self.assertEqual([f.node for f in error.failures], [A])
        self.assertIn(fingerprint(stranger), error.failures[0].cause)
        self.assertIsNone(self.nodes[A].store.load())
        self.assertFails(
            self.client_with(stranger).run(A, self.port, ["version"]),
            AuthenticationRefused)
        self.assert_still_serving()

    def test_unknown_host_key_refused_with_fingerprint(self):
        """flocker-deploy's client refuses a node whose host key is not in
        its known_hosts, showing the key's fingerprint, before sending
        anything."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# no nodes trusted\n")
        client = self.client_with(self.operator, path)
        deployment = Deployment(nodes=[Node(A, [WEB])])
        error = self.assertFails(deploy_lib.deploy(
            self.net, client, deployment, self.port, lambda n, e: None),
            deploy_lib.DeployFailed)
        self.assertEqual([f.node for f in error.failures], [A])
        self.assertIn(fingerprint(self.nodes[A].keys.host_key),
                      error.failures[0].cause)
        self.assertIsNone(self.nodes[A].convergence.lease)
        self.assertIsNone(self.nodes[A].store.load())

    def test_bad_receive_streams_keep_previous_snapshot(self):
        """A peer's garbage or truncated stream into a replica fails and
        leaves the replica at its previous snapshot with its contents."""
        self.deploy({A: [WEB], B: []})
        self.nodes[A].pool.write_file(VolumeName("web"), "rows", b"1\n")
        self.deploy({A: [], B: [WEB]})  # A now holds a replica
        replica = self.nodes[A].pool
        before = [s.name for s in self.drive(replica.snapshots(VolumeName("web")))]
        self.assertTrue(before)
        # A real increment from the owner, to cut short.
        owner = self.nodes[B].pool
        owner.write_file(VolumeName("web"), "rows", b"1\n2\n" * 10000)
        snapshot = self.drive(owner.snapshot(VolumeName("web")))
        from flocker_async.volume import Snapshot
        base = Snapshot(VolumeName("web"), before[-1])
        collected = []

        class Collect:
            def registerProducer(self, producer, streaming):
                pass

            def unregisterProducer(self):
                pass

            def write(self, data):
                collected.append(data)
        stream = owner.send(snapshot, Collect(), base=base)
        self.drive(stream.done)
        whole = b"".join(collected)
        self.assertGreater(len(whole), 100)
        peer_key = self.nodes[B].keys.node_key
        self.nodes[A].authorizer.set_keys(PEER, [peer_key])
        client = self.client_with(peer_key)
        for what, data in [("garbage", b"\x00garbage" * 1000),
                           ("truncated", whole[:len(whole) // 2]),
                           ("empty", b"")]:
            error = self.assertFails(
                client.run(A, self.port, ["receive", "web"], stdin=data),
                RemoteCommandFailed)
            self.assertNotEqual(error.result.status, 0, what)
            after = [s.name for s in self.drive(replica.snapshots(VolumeName("web")))]
            self.assertEqual(after, before, what)
            volume = self.drive(replica.get(VolumeName("web")))
            self.assertEqual((volume.owner, volume.read_only), (B, True), what)
            with open(os.path.join(self.nodes[A].deployer.volume_path("web"),
                                   "rows"), "rb") as f:
                self.assertEqual(f.read(), b"1\n", what)
            self.assert_still_serving()


class ChannelMemoryTests(InMemoryNodes, SynchronousTestCase):
    """Issue 17, point 4, against the node command set."""

    def test_twelve_sessions_pin_little(self):
        """
        A peer key opens 12 sessions on one connection and sends 8 MiB of
        stdin on each before any exec: the node takes at most 10 sessions
        and holds at most their small initial window (64 KiB) of stdin each,
        640 KiB in all (it held a full 8 MiB window per session: 96 MiB).
        """
        peer = generate_key()
        self.nodes[A].authorizer.set_keys(PEER, [peer])
        connection = self.drive(self.client_with(peer).connect(A, self.port))
        results = []
        for _ in range(12):
            RawSession.open_on(connection).addBoth(results.append)
        self.net.pump()
        sessions = [r for r in results if isinstance(r, RawSession)]
        refused = [r for r in results if isinstance(r, Failure)]
        for session in sessions:
            session.write(b"x" * (8 * 1024 * 1024))
        self.net.pump()
        pinned = sum(channel.stdin.buffered
                     for transport in self.net.server_protocols(A, self.port)
                     for channel in transport.service.channels.values())
        report = "%d bytes of stdin pinned by %d sessions" % (pinned, len(sessions))
        self.assertEqual((len(sessions), len(refused)), (10, 2), report)
        self.assertEqual(pinned, 10 * 64 * 1024, report)
        # The node still serves, on this connection once a session is closed.
        connection._conn.sendClose(sessions[0])  # its unsent stdin dropped
        self.net.pump()
        result = self.drive(connection.run(["version"]))
        self.assertTrue(result.stdout.startswith(b"flocker-node "))


class OpenFilesLimitTests(SynchronousTestCase):
    def test_unit_raises_the_open_files_limit(self):
        """
        Issue 17, point 1: the systemd unit gives the daemon room for many
        connections beside its zfs, iptables and docker pipes (the default
        soft limit is 1,024).
        """
        service = dict(parse_unit(UNIT)["Service"])
        self.assertGreaterEqual(int(service["LimitNOFILE"]), 65536)
