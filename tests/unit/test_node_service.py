"""
The node service end to end over conch SSH, on an in-memory network with a
fake clock (tests/testtools/ssh.py): flocker-deploy's library gathers state
and applies; nodes push volumes to each other with the peer commands, learn
newer deployments from each other, and replicate to their standbys.  No
socket, no wall-clock wait.
"""

import json
import os

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase

from flocker_async import deploy as deploy_lib
from flocker_async.docker import MemoryDockerClient
from flocker_async.model import (
    Application,
    AttachedVolume,
    Deployment,
    DockerImage,
    Node,
    Port,
)
from flocker_async.node._deployer import Deployer
from flocker_async.node._persist import DesiredStateStore
from flocker_async.node._replication import Replicator
from flocker_async.node._ssh_peers import SSHPeers
from flocker_async.node.service import NodeConvergence, SSHListener, node_commands
from flocker_async.route import MemoryNetwork, OpenPort, Proxy
from flocker_async.ssh import (
    OPERATOR,
    KeyAuthorizer,
    NodeKeys,
    SSHClient,
    add_known_host,
    generate_key,
    make_ssh_factory,
)
from flocker_async.volume import MemoryStoragePool, VolumeName
from flocker_async.wire import decode_apply

from ..testtools.ssh import MemoryTCPNetwork, forbid_global_reactor

IMAGE = DockerImage("flocker-lab/busybox")
A, B, C = "10.9.0.2", "10.9.0.3", "10.9.0.4"
OPERATOR_ADDRESS = "10.9.0.100"
PORT = 4522
WEB = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                  volume=AttachedVolume("/data"))


class InMemoryNode:
    """One in-process node, its daemon's pieces on the network's clock."""

    def __init__(self, testcase, net, address, operator_key):
        self.address = address
        self.reactor = net.host(address)
        root = testcase.mktemp()
        os.makedirs(root)
        self.keys = NodeKeys(host_key=generate_key(), node_key=generate_key())
        self.docker = MemoryDockerClient(images=[IMAGE])
        self.pool = MemoryStoragePool(self.reactor, os.path.join(root, "pool"), address)
        self.network = MemoryNetwork()
        known_hosts = os.path.join(root, "peers_known_hosts")
        self.peers = SSHPeers(self.reactor, self.keys.node_key, known_hosts)
        self.deployer = Deployer(address, self.docker, self.pool, self.network,
                                 self.peers, self.reactor, resolve=defer.succeed)
        self.authorizer = KeyAuthorizer({OPERATOR: [operator_key]})
        self.store = DesiredStateStore(os.path.join(root, "state"))
        self.convergence = NodeConvergence(
            self.deployer, self.store, self.reactor, 3600, self.authorizer,
            self.peers, known_hosts)
        self.replicator = Replicator(self.deployer, lambda: self.convergence.request,
                                     self.reactor, self.convergence.events.emit)
        self.convergence.replicator = self.replicator
        self.factory = make_ssh_factory(self.reactor, self.keys.host_key,
                                        self.authorizer,
                                        node_commands(self.convergence, self.keys, PORT))
        self.port = None

    def listen(self, net):
        self.port = net.run(TCP4ServerEndpoint(self.reactor, PORT).listen(self.factory))
        return self.port


class InMemoryNodes:
    """A test case mixin: nodes ``ADDRESSES`` listening on an in-memory
    network, and an operator's client that trusts them."""

    ADDRESSES = (A, B)

    def setUp(self):
        forbid_global_reactor(self)
        self.net = MemoryTCPNetwork()
        self.port = PORT
        self.operator = generate_key()
        self.known_hosts = self.mktemp()
        self.nodes = {}
        for address in self.ADDRESSES:
            node = InMemoryNode(self, self.net, address, self.operator)
            self.addCleanup(node.listen(self.net).stopListening)
            add_known_host(self.known_hosts, address, PORT, node.keys.host_key)
            self.nodes[address] = node
        self.client = self.client_with(self.operator)
        self.events = []

    def client_with(self, key, known_hosts=None):
        return SSHClient(self.net.host(OPERATOR_ADDRESS), key,
                         known_hosts or self.known_hosts)

    def drive(self, d):
        return self.net.run(d)

    def deploy(self, placement, client=None, **kwargs):
        deployment = Deployment(nodes=[Node(h, apps) for h, apps in placement.items()],
                                standby=kwargs.pop("standby", ()))
        return self.drive(deploy_lib.deploy(
            self.net, client or self.client, deployment, PORT,
            lambda node, event: self.events.append((node, event)), **kwargs))

    def units(self, address):
        return sorted(u.name for u in self.drive(self.nodes[address].docker.list()))

    def assertFails(self, d, *errors):
        """Run ``d``; it must fail with one of ``errors``: return that."""
        try:
            self.drive(d)
        except errors as e:
            return e
        self.fail("did not fail with %r" % (errors,))


class NodeServiceTests(InMemoryNodes, SynchronousTestCase):
    def test_deploy_then_move_over_ssh(self):
        self.deploy({A: [WEB], B: []})
        self.assertEqual(self.units(A), ["web"])
        self.nodes[A].pool.write_file(VolumeName("web"), "rows", b"1\n2\n")
        # The desired state was persisted before acting.
        saved = decode_apply(self.nodes[B].store.load())
        self.assertEqual(saved.deployment.node_for("web").hostname, A)

        self.deploy({A: [], B: [WEB]})
        self.assertEqual(self.units(A), [])
        self.assertEqual(self.units(B), ["web"])
        with open(os.path.join(self.nodes[B].deployer.volume_path("web"), "rows"),
                  "rb") as f:
            self.assertEqual(f.read(), b"1\n2\n")
        state_a = self.drive(self.nodes[A].network.get_state())
        state_b = self.drive(self.nodes[B].network.get_state())
        self.assertEqual(state_a.proxies, frozenset([Proxy("web", 8080, B)]))
        self.assertEqual(state_b.open_ports, frozenset([OpenPort("web", 8080)]))
        # Progress came back over SSH: the transfer events with bytes, and
        # what the source's push made happen on the destination.
        transfers = [e for n, e in self.events if e.get("action") == "transferred"]
        self.assertTrue(transfers)
        self.assertTrue(all(e["bytes"] > 0 for e in transfers))
        on_b = [e.get("action") for n, e in self.events if n == B]
        self.assertIn("received", on_b)
        self.assertIn("acquired", on_b)
        results = [e for n, e in self.events if "result" in e]
        self.assertEqual(sorted(e["result"] for e in results), ["ok"] * 4)
        # Each deploy is one generation more.
        self.assertEqual(decode_apply(self.nodes[B].store.load()).generation, 2)

    def test_concurrent_deploys_never_interleave(self):
        """Two deploys at once: one holds the cluster, the other waits for
        it, then applies; every node ends in the second one's state."""
        events = []
        first = deploy_lib.deploy(self.net, self.client,
                                  Deployment(nodes=[Node(A, [WEB]), Node(B, [])]),
                                  PORT, lambda n, e: events.append(e))
        second = deploy_lib.deploy(self.net, self.client_with(self.operator),
                                   Deployment(nodes=[Node(A, []), Node(B, [WEB])]),
                                   PORT, lambda n, e: events.append(e))
        self.drive(defer.gatherResults([defer.Deferred.fromCoroutine(first),
                                      defer.Deferred.fromCoroutine(second)]))
        waits = [e for e in events if e.get("action") == "waiting"]
        self.assertTrue(waits)
        self.assertIn("held by", waits[0]["message"])
        on_a, on_b = self.units(A), self.units(B)
        self.assertEqual(sorted(on_a + on_b), ["web"])
        self.net.wait(1)
        for node in self.nodes.values():
            self.assertIsNone(node.convergence.lease)
            saved = decode_apply(node.store.load())
            self.assertEqual(saved.deployment.node_for("web").hostname,
                             A if on_a else B)

    def test_lease_refuses_other_deploy_apply(self):
        """While a deploy holds a node, another deploy's apply is refused."""
        node = self.nodes[A]
        node.convergence.lease = {"deploy_id": "other", "key": "SHA256:x",
                                  "peer": "10.0.0.9", "since": self.net.seconds()}
        deployment = Deployment(nodes=[Node(A, [WEB])])
        infos = self.drive(deploy_lib.gather(self.net, self.client, deployment, PORT))
        error = self.assertFails(deploy_lib.apply_all(
            self.client, deployment, infos, PORT, lambda n, e: None),
            deploy_lib.DeployFailed)
        self.assertIn("held by another deploy (deploy other", str(error))
        self.assertEqual(self.units(A), [])

    def test_daemon_port_never_proxied(self):
        """A node refuses a deployment publishing its own SSH port: every
        node would forward it away from the daemons."""
        sneaky = Application(name="sneaky", image=IMAGE, ports=[Port(22, 4522)])
        deployment = Deployment(nodes=[Node(A, [sneaky])])
        infos = self.drive(deploy_lib.gather(self.net, self.client, deployment, PORT))
        error = self.assertFails(deploy_lib.apply_all(
            self.client, deployment, infos, PORT, lambda n, e: None),
            deploy_lib.DeployFailed)
        self.assertIn("external port 4522 is this node's flocker-node SSH port",
                      str(error))
        self.assertIsNone(self.nodes[A].store.load())

    def test_node_finishes_when_deploy_goes_away(self):
        """flocker-deploy interrupted mid-move: the nodes finish the move
        rather than stopping half way."""
        self.deploy({A: [WEB], B: []})
        self.nodes[A].pool.write_file(VolumeName("web"), "big", os.urandom(1 << 20))
        moving = defer.Deferred.fromCoroutine(deploy_lib.deploy(
            self.net, self.client, Deployment(nodes=[Node(A, []), Node(B, [WEB])]),
            PORT, lambda n, e: self.events.append((n, e))))
        # flocker-deploy goes away (Ctrl-C) as the bulk push starts.
        self.nodes[A].convergence.events.listening(
            lambda event: event.get("action") == "push" and not moving.called
            and self.net.callLater(0, moving.cancel))
        self.assertFails(moving, deploy_lib.DeployFailed, defer.CancelledError)
        self.assertFalse(any(e.get("action") == "handed-over" for n, e in self.events))
        while self.nodes[A].convergence.lock.locked or self.nodes[B].convergence.lock.locked:
            self.net.wait(0.1)
        units = self.drive(self.nodes[B].docker.list())
        self.assertEqual([u.name for u in units if u.running], ["web"])
        self.assertEqual(self.units(A), [])

    def test_daemon_gone_mid_deploy_fails_naming_it(self):
        """A node whose daemon goes away during the deploy (its connections
        cut): the deploy fails naming it instead of waiting for ever."""
        self.deploy({A: [WEB], B: []})
        moving = defer.Deferred.fromCoroutine(deploy_lib.deploy(
            self.net, self.client, Deployment(nodes=[Node(A, []), Node(B, [WEB])]),
            PORT, lambda n, e: self.events.append((n, e))))
        # B's daemon goes away (its connections cut, none accepted) as the
        # bulk push arrives.
        self.nodes[B].convergence.events.listening(
            lambda event: event.get("action") == "received"
            and self.net.callLater(0, self.net.stall, B))
        error = self.assertFails(moving, deploy_lib.DeployFailed)
        self.assertIn(B, [f.node for f in error.failures])

    def test_operator_cannot_receive(self):
        """Peer commands are refused to the operator's key."""
        from flocker_async.ssh import RemoteCommandFailed
        error = self.assertFails(self.client.run(A, PORT, ["receive", "web"]),
                                 RemoteCommandFailed)
        self.assertEqual(error.result.status, 126)

    def test_invalid_apply_refused_and_nothing_saved(self):
        from flocker_async.ssh import RemoteCommandFailed
        error = self.assertFails(
            self.client.run(A, PORT, ["apply"], stdin=b'{"version": 1, "node": "%s"}'
                            % (A.encode(),)),
            RemoteCommandFailed)
        self.assertEqual(error.result.status, 1)
        last = json.loads(error.result.stdout.decode().splitlines()[-1])
        self.assertEqual(last["result"], "invalid")
        self.assertIsNone(self.nodes[A].store.load())

    def test_unreachable_node_applies_nothing(self):
        missing = "10.9.0.99"
        deployment = Deployment(nodes=[Node(A, [WEB]), Node(missing, [])])
        error = self.assertFails(deploy_lib.deploy(
            self.net, self.client, deployment, PORT, lambda n, e: None),
            deploy_lib.DeployFailed)
        self.assertEqual([f.node for f in error.failures], [missing])
        self.assertEqual(self.units(A), [])


class SelfHealingTests(InMemoryNodes, SynchronousTestCase):
    """The daemon mends its node from the persisted desired state, without
    anyone running flocker-deploy."""

    ADDRESSES = (A,)

    def setUp(self):
        InMemoryNodes.setUp(self)
        self.node = self.nodes[A]
        self.deploy({A: [WEB]})

    def test_crashed_container_restarted(self):
        before = {u.name: u for u in self.drive(self.node.docker.list())}
        self.node.docker.simulate_exit("web")
        self.drive(self.node.convergence.converge_now())
        after = {u.name: u for u in self.drive(self.node.docker.list())}
        self.assertTrue(after["web"].running)
        self.assertNotEqual(after["web"].container_id, before["web"].container_id)

    def test_wiped_rules_restored(self):
        self.drive(self.node.network.remove_all())
        self.drive(self.node.convergence.converge_now())
        state = self.drive(self.node.network.get_state())
        self.assertEqual(state.open_ports, frozenset([OpenPort("web", 8080)]))

    def test_restart_reloads_desired_state(self):
        """A new daemon over the same state directory converges at start."""
        self.node.pool.write_file(VolumeName("web"), "kept", b"data")
        self.node.docker.simulate_exit("web")
        # "Restart": a fresh convergence service over the same store.
        restarted = NodeConvergence(
            self.node.deployer, self.node.store, self.node.reactor, 3600,
            self.node.authorizer, self.node.peers,
            self.node.convergence.known_hosts_path)
        restarted.startService()
        self.addCleanup(restarted.stopService)
        self.drive(restarted.lock.run(lambda: None))
        self.assertIsNotNone(restarted.request)
        units = {u.name: u for u in self.drive(self.node.docker.list())}
        self.assertTrue(units["web"].running)
        volume = self.drive(self.node.pool.get(VolumeName("web")))
        self.assertTrue(volume.owned_by(A))

    def test_unreadable_desired_state_not_acted_on(self):
        self.node.store.save(b'{"version": 1, "node": "%s"}' % (A.encode(),))
        fresh = NodeConvergence(
            self.node.deployer, self.node.store, self.node.reactor, 3600,
            self.node.authorizer, self.node.peers,
            self.node.convergence.known_hosts_path)
        fresh.load()
        self.assertIsNone(fresh.request)
        self.flushLoggedErrors()


class ReadinessTests(SynchronousTestCase):
    def test_ready_sent_once_listening(self):
        """READY=1 reaches $NOTIFY_SOCKET only after the SSH port listens,
        STOPPING=1 when it stops."""
        forbid_global_reactor(self)
        net = MemoryTCPNetwork()
        sent = []

        class Notifier:
            def ready(self, status):
                sent.append("READY=1")

            def stopping(self):
                sent.append("STOPPING=1")
        node = InMemoryNode(self, net, A, generate_key())
        listener = SSHListener(TCP4ServerEndpoint(node.reactor, PORT), node.factory,
                               Notifier(), "%s:%d" % (A, PORT), node.reactor)
        self.assertEqual(sent, [])
        listener.startService()
        net.pump()
        self.assertEqual(sent, ["READY=1"])
        self.assertIn((A, PORT), net.listeners)
        net.run(listener.stopService())
        self.assertEqual(sent, ["READY=1", "STOPPING=1"])
        self.assertNotIn((A, PORT), net.listeners)

    def test_cannot_listen_stops_the_daemon(self):
        """A port that cannot be had: the daemon says so and stops, and
        never tells systemd it is ready."""
        from twisted.internet.error import CannotListenError
        forbid_global_reactor(self)
        net = MemoryTCPNetwork()
        sent, stopped = [], []

        class Failing:
            def listen(self, factory):
                return defer.fail(CannotListenError(A, PORT, OSError("in use")))

        class Notifier:
            def ready(self, status):
                sent.append(status)

            def stopping(self):
                pass

        class Reactor:
            def stop(self):
                stopped.append(True)
        node = InMemoryNode(self, net, A, generate_key())
        SSHListener(Failing(), node.factory, Notifier(), "%s:%d" % (A, PORT),
                    Reactor()).startService()
        self.assertEqual((sent, stopped), ([], [True]))
        self.assertTrue(self.flushLoggedErrors(CannotListenError))
