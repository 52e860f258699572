"""
flocker-deploy's library against a scripted SSH client: what a deploy does
when a node's lease ends before the deploy releases it.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flocker_async import deploy as deploy_lib
from flocker_async.model import Deployment, Node, NodeState
from flocker_async.ssh import CommandResult, ConnectFailed, generate_key, public_key_line
from flocker_async.wire import encode_node_state

N1, N2 = "10.1.0.1", "10.1.0.2"
KEY = public_key_line(generate_key())


class ScriptedNode:
    def __init__(self, address):
        self.address = address
        self.leases = []      # the running lease commands
        self.applies = []     # the running apply commands

    def lease(self, consumer):
        running = Deferred()
        self.leases.append(running)
        consumer.write(b'{"lease": "granted"}\n')
        return running

    def state(self):
        document = encode_node_state(NodeState(self.address), extra={
            "ssh_port": 4522, "node_key": KEY, "host_key": KEY})
        return json.dumps(document).encode()

    def apply(self, consumer):
        running = Deferred()
        self.applies.append(running)
        return running


class ScriptedConnection:
    def __init__(self, node):
        self.node = node
        self.closed = False

    def run(self, argv, stdout_consumer=None, **kwargs):
        assert argv[0] == "lease", argv
        return self.node.lease(stdout_consumer)

    def close(self, abort=False):
        self.closed = True


class ScriptedClient:
    def __init__(self, nodes):
        self.nodes = nodes

    def connect(self, host, port):
        from twisted.internet.defer import succeed
        return succeed(ScriptedConnection(self.nodes[host]))

    def run(self, host, port, argv, stdin=None, stdout_consumer=None, **kwargs):
        from twisted.internet.defer import succeed
        node = self.nodes[host]
        if argv == ["state"]:
            return succeed(CommandResult(host, port, tuple(argv), 0, None,
                                         node.state(), b""))
        if argv == ["apply"]:
            return node.apply(stdout_consumer)
        raise AssertionError(argv)


class LeaseLostTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.nodes = {N1: ScriptedNode(N1), N2: ScriptedNode(N2)}
        self.client = ScriptedClient(self.nodes)
        self.deployment = Deployment(nodes=[Node(N1, []), Node(N2, [])])

    def deploy(self):
        return Deferred.fromCoroutine(deploy_lib.deploy(
            self.clock, self.client, self.deployment, 4522, lambda node, event: None))

    def test_lease_lost_during_apply_fails_naming_the_node(self):
        """A node's lease ends while its apply runs (its daemon restarted,
        the lease's connection dropped): another deploy could interleave,
        so this one fails at once, naming the node and why."""
        running = self.deploy()
        self.assertEqual([len(n.applies) for n in self.nodes.values()], [1, 1])
        self.assertNoResult(running)
        self.nodes[N2].leases[0].errback(ConnectFailed(N2, 4522, "connection lost"))
        failure = self.failureResultOf(running, deploy_lib.DeployFailed)
        [node_failure] = failure.value.failures
        self.assertEqual(node_failure.node, N2)
        self.assertIn("lost this deploy's lease", node_failure.cause)
        self.assertIn("connection lost", node_failure.cause)
        # Its applies are no longer waited for, and every lease is released.
        self.assertTrue(all(d.called for n in self.nodes.values() for d in n.applies))
        self.assertTrue(all(d.called for n in self.nodes.values() for d in n.leases))

    def test_leases_released_after_success(self):
        running = self.deploy()
        for node in self.nodes.values():
            node.applies[0].callback(None)
        self.successResultOf(running)
        self.assertTrue(all(d.called for n in self.nodes.values() for d in n.leases))
