"""
The node service end to end over real SSH (conch, loopback), with the
in-memory backends: flocker-deploy's library gathers state and applies;
nodes push volumes to each other with the peer commands.
"""

import json
import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

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
from flocker_async.node._ssh_peers import SSHPeers
from flocker_async.wire import decode_apply
from flocker_async.node.service import NodeConvergence, node_commands
from flocker_async.route import MemoryNetwork, OpenPort, Proxy
from flocker_async.ssh import (
    OPERATOR,
    KeyAuthorizer,
    NodeKeys,
    SSHClient,
    generate_key,
    make_ssh_factory,
)
from flocker_async.volume import MemoryStoragePool, VolumeName

IMAGE = DockerImage("flocker-lab/busybox")
# Proxies refuse loopback targets; the rules use these stand-ins.
LAB_ADDRESS = {"127.0.0.2": "10.9.0.2", "127.0.0.3": "10.9.0.3"}
WEB = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                  volume=AttachedVolume("/data"))


class Node_:
    """One in-process node on its own loopback address."""

    def __init__(self, testcase, address, operator_key, port):
        self.address = address
        root = testcase.mktemp()
        os.makedirs(root)
        self.keys = NodeKeys(host_key=generate_key(), node_key=generate_key())
        self.docker = MemoryDockerClient(images=[IMAGE])
        self.pool = MemoryStoragePool(reactor, os.path.join(root, "pool"), address)
        self.network = MemoryNetwork()
        known_hosts = os.path.join(root, "peers_known_hosts")
        self.peers = SSHPeers(reactor, self.keys.node_key, known_hosts)
        self.deployer = Deployer(address, self.docker, self.pool, self.network,
                                 self.peers, reactor, resolve=lambda host: defer.succeed(
                                     LAB_ADDRESS[host]))
        self.authorizer = KeyAuthorizer({OPERATOR: [operator_key]})
        self.store = DesiredStateStore(os.path.join(root, "state"))
        self.convergence = NodeConvergence(
            self.deployer, self.store, reactor, 3600, self.authorizer,
            self.peers, known_hosts)
        factory = make_ssh_factory(reactor, self.keys.host_key, self.authorizer,
                                   node_commands(self.convergence, self.keys, port))
        self.factory = factory

    @defer.inlineCallbacks
    def listen(self, port):
        self.port = yield TCP4ServerEndpoint(reactor, port, interface=self.address
                                             ).listen(self.factory)
        return self.port.getHost().port


class NodeServiceTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.operator = generate_key()
        self.nodes = {}
        known_hosts = []
        # One port for all nodes, as in a real cluster: each node has its
        # own address.
        self.port = free_port()
        for address in ("127.0.0.2", "127.0.0.3"):
            node = Node_(self, address, self.operator, self.port)
            yield node.listen(self.port)
            self.addCleanup(node.port.stopListening)
            self.nodes[address] = node
        for node in self.nodes.values():
            known_hosts.append("[%s]:%d %s\n" % (
                node.address, self.port,
                node.keys.host_key.public().toString("openssh").decode()))
        path = self.mktemp()
        with open(path, "w") as f:
            f.writelines(known_hosts)
        self.client = SSHClient(reactor, self.operator, path)
        self.events = []

    def deploy(self, placement):
        deployment = Deployment(nodes=[Node(h, apps) for h, apps in placement.items()])
        return Deferred_from(deploy_lib.deploy(
            reactor, self.client, deployment, self.port,
            lambda node, event: self.events.append((node, event))))

    @defer.inlineCallbacks
    def test_deploy_then_move_over_ssh(self):
        a, b = "127.0.0.2", "127.0.0.3"
        yield self.deploy({a: [WEB], b: []})
        units = yield self.nodes[a].docker.list()
        self.assertEqual([u.name for u in units], ["web"])
        yield self.nodes[a].pool.write_file(VolumeName("web"), "rows", b"1\n2\n")
        # The desired state was persisted before acting.
        saved = decode_apply(self.nodes[b].store.load())
        self.assertEqual(saved.deployment.node_for("web").hostname, a)

        yield self.deploy({a: [], b: [WEB]})
        self.assertEqual((yield self.nodes[a].docker.list()), frozenset())
        self.assertEqual([u.name for u in (yield self.nodes[b].docker.list())], ["web"])
        with open(os.path.join(self.nodes[b].deployer.volume_path("web"), "rows"),
                  "rb") as f:
            self.assertEqual(f.read(), b"1\n2\n")
        state_a = yield self.nodes[a].network.get_state()
        state_b = yield self.nodes[b].network.get_state()
        self.assertEqual(state_a.proxies, frozenset([Proxy("web", 8080, LAB_ADDRESS[b])]))
        self.assertEqual(state_b.open_ports, frozenset([OpenPort("web", 8080)]))
        # Progress came back over SSH: the transfer events with bytes.
        transfers = [e for n, e in self.events if e.get("action") == "transferred"]
        self.assertTrue(transfers)
        self.assertTrue(all(e["bytes"] > 0 for e in transfers))
        results = [e for n, e in self.events if "result" in e]
        self.assertEqual(sorted(e["result"] for e in results), ["ok"] * 4)

    @defer.inlineCallbacks
    def test_concurrent_deploys_never_interleave(self):
        """Two deploys at once: one holds the cluster, the other waits for
        it, then applies; every node ends in the second one's state."""
        a, b = "127.0.0.2", "127.0.0.3"
        first = self.deploy({a: [WEB], b: []})
        second = self.deploy({a: [], b: [WEB]})
        yield defer.gatherResults([first, second])
        waits = [e for n, e in self.events if e.get("action") == "waiting"]
        self.assertTrue(waits)
        self.assertIn("held by", waits[0]["message"])
        on_a = [u.name for u in (yield self.nodes[a].docker.list())]
        on_b = [u.name for u in (yield self.nodes[b].docker.list())]
        self.assertEqual(sorted(on_a + on_b), ["web"])
        for node in self.nodes.values():
            yield wait_until(lambda: node.convergence.lease is None)
            saved = decode_apply(node.store.load())
            self.assertEqual(saved.deployment.node_for("web").hostname,
                             a if on_a else b)

    @defer.inlineCallbacks
    def test_lease_refuses_other_deploy_apply(self):
        """While a deploy holds a node, another deploy's apply is refused."""
        node = self.nodes["127.0.0.2"]
        node.convergence.lease = {"deploy_id": "other", "key": "SHA256:x",
                                  "peer": "10.0.0.9", "since": reactor.seconds()}
        deployment = Deployment(nodes=[Node("127.0.0.2", [WEB])])
        infos = yield Deferred_from(deploy_lib.gather(
            reactor, self.client, deployment, self.port))
        error = yield self.assertFailure(Deferred_from(deploy_lib.apply_all(
            self.client, deployment, infos, self.port, lambda n, e: None)),
            deploy_lib.DeployFailed)
        self.assertIn("held by another deploy (deploy other", str(error))
        self.assertEqual((yield node.docker.list()), frozenset())

    @defer.inlineCallbacks
    def test_daemon_port_never_proxied(self):
        """A node refuses a deployment publishing its own SSH port: every
        node would forward it away from the daemons."""
        sneaky = Application(name="sneaky", image=IMAGE, ports=[Port(22, 4522)])
        deployment = Deployment(nodes=[Node("127.0.0.2", [sneaky])])
        infos = yield Deferred_from(deploy_lib.gather(
            reactor, self.client, deployment, self.port))
        error = yield self.assertFailure(Deferred_from(deploy_lib.apply_all(
            self.client, deployment, infos, self.port, lambda n, e: None)),
            deploy_lib.DeployFailed)
        self.assertIn("external port 4522 is this node's flocker-node SSH port",
                      str(error))
        self.assertIsNone(self.nodes["127.0.0.2"].store.load())

    @defer.inlineCallbacks
    def test_node_finishes_when_deploy_goes_away(self):
        """flocker-deploy interrupted mid-move: the nodes finish the move
        rather than stopping half way."""
        a, b = "127.0.0.2", "127.0.0.3"
        yield self.deploy({a: [WEB], b: []})
        yield self.nodes[a].pool.write_file(VolumeName("web"), "big", os.urandom(1 << 20))
        moving = self.deploy({a: [], b: [WEB]})
        yield wait_until(lambda: any(e.get("action") in ("push", "wait-handoff")
                                     for n, e in self.events))
        moving.cancel()
        yield self.assertFailure(moving, deploy_lib.DeployFailed, defer.CancelledError)
        yield wait_until(lambda: not self.nodes[a].convergence.lock.locked
                         and not self.nodes[b].convergence.lock.locked, timeout=20)
        units = yield self.nodes[b].docker.list()
        self.assertEqual([u.name for u in units if u.running], ["web"])
        self.assertEqual((yield self.nodes[a].docker.list()), frozenset())

    @defer.inlineCallbacks
    def test_operator_cannot_receive(self):
        """Peer commands are refused to the operator's key."""
        from flocker_async.ssh import RemoteCommandFailed
        error = yield self.assertFailure(
            self.client.run("127.0.0.2", self.port, ["receive", "web"]),
            RemoteCommandFailed)
        self.assertEqual(error.result.status, 126)

    @defer.inlineCallbacks
    def test_invalid_apply_refused_and_nothing_saved(self):
        from flocker_async.ssh import RemoteCommandFailed
        error = yield self.assertFailure(
            self.client.run("127.0.0.2", self.port, ["apply"],
                            stdin=b'{"version": 1, "node": "127.0.0.2"}'),
            RemoteCommandFailed)
        self.assertEqual(error.result.status, 1)
        last = json.loads(error.result.stdout.decode().splitlines()[-1])
        self.assertEqual(last["result"], "invalid")
        self.assertIsNone(self.nodes["127.0.0.2"].store.load())

    @defer.inlineCallbacks
    def test_unreachable_node_applies_nothing(self):
        deployment = Deployment(nodes=[Node("127.0.0.2", [WEB]), Node("127.0.0.9", [])])
        error = yield self.assertFailure(Deferred_from(deploy_lib.deploy(
            reactor, self.client, deployment, self.port, lambda n, e: None)),
            deploy_lib.DeployFailed)
        self.assertEqual([f.node for f in error.failures], ["127.0.0.9"])
        self.assertEqual((yield self.nodes["127.0.0.2"].docker.list()), frozenset())


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in %s s" % (timeout,))
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        yield d


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def Deferred_from(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class SelfHealingTests(TestCase):
    """The daemon mends its node from the persisted desired state, without
    anyone running flocker-deploy."""

    @defer.inlineCallbacks
    def setUp(self):
        self.operator = generate_key()
        self.port = free_port()
        self.node = Node_(self, "127.0.0.2", self.operator, self.port)
        yield self.node.listen(self.port)
        self.addCleanup(self.node.port.stopListening)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[127.0.0.2]:%d %s\n" % (
                self.port, self.node.keys.host_key.public().toString("openssh").decode()))
        self.client = SSHClient(reactor, self.operator, path)
        deployment = Deployment(nodes=[Node("127.0.0.2", [WEB])])
        yield Deferred_from(deploy_lib.deploy(reactor, self.client, deployment,
                                              self.port, lambda n, e: None))

    @defer.inlineCallbacks
    def test_crashed_container_restarted(self):
        before = {u.name: u for u in (yield self.node.docker.list())}
        self.node.docker.simulate_exit("web")
        yield self.node.convergence.converge_now()
        after = {u.name: u for u in (yield self.node.docker.list())}
        self.assertTrue(after["web"].running)
        self.assertNotEqual(after["web"].container_id, before["web"].container_id)

    @defer.inlineCallbacks
    def test_wiped_rules_restored(self):
        yield self.node.network.remove_all()
        yield self.node.convergence.converge_now()
        state = yield self.node.network.get_state()
        self.assertEqual(state.open_ports, frozenset([OpenPort("web", 8080)]))

    @defer.inlineCallbacks
    def test_restart_reloads_desired_state(self):
        """A new daemon over the same state directory converges at start."""
        yield self.node.pool.write_file(VolumeName("web"), "kept", b"data")
        self.node.docker.simulate_exit("web")
        # "Restart": a fresh convergence service over the same store.
        restarted = NodeConvergence(
            self.node.deployer, self.node.store, reactor, 3600,
            self.node.authorizer, self.node.peers, self.node.convergence.known_hosts_path)
        restarted.startService()
        self.addCleanup(restarted.stopService)
        yield wait_until(lambda: not restarted.lock.locked)
        yield restarted.lock.acquire()
        restarted.lock.release()
        self.assertIsNotNone(restarted.request)
        units = {u.name: u for u in (yield self.node.docker.list())}
        self.assertTrue(units["web"].running)
        volume = yield self.node.pool.get(VolumeName("web"))
        self.assertTrue(volume.owned_by("127.0.0.2"))

    def test_unreadable_desired_state_not_acted_on(self):
        self.node.store.save(b'{"version": 1, "node": "127.0.0.2"}')
        fresh = NodeConvergence(
            self.node.deployer, self.node.store, reactor, 3600,
            self.node.authorizer, self.node.peers, self.node.convergence.known_hosts_path)
        fresh.load()
        self.assertIsNone(fresh.request)
        self.flushLoggedErrors()


class ReadinessTests(TestCase):
    @defer.inlineCallbacks
    def test_ready_sent_once_listening(self):
        """READY=1 reaches $NOTIFY_SOCKET only after the SSH port listens."""
        import socket as socket_module
        from flocker_async.node._sdnotify import SystemdNotifier
        from flocker_async.node.service import SSHListener
        import tempfile
        directory = tempfile.mkdtemp(prefix="fa-")  # AF_UNIX paths are short
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        self.addCleanup(os.unlink, path)
        sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self.addCleanup(sock.close)
        node = Node_(self, "127.0.0.2", generate_key(), 0)
        listener = SSHListener(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2"),
                               node.factory, SystemdNotifier({"NOTIFY_SOCKET": path}),
                               "127.0.0.2:0", reactor)
        self.assertRaises(BlockingIOError, sock.recv, 100)
        listener.startService()
        listening = []
        listener._waitingForPort.addCallback(lambda port: listening.append(port) or port)
        self.assertEqual(len(listening), 1)
        self.assertIn(b"READY=1", sock.recv(100))
        yield listener.stopService()
        self.assertIn(b"STOPPING=1", sock.recv(100))
