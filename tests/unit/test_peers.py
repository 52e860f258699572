"""
The IPeers contract (tests/testtools/peers.py) against the in-process fake
and against the SSH peers over conch on an in-memory network.
"""

import os

from twisted.internet import defer
from twisted.internet.task import Clock

from flocker_async.docker import MemoryDockerClient
from flocker_async.node._deployer import Deployer
from flocker_async.node._memory_peers import MemoryPeers
from flocker_async.node._persist import DesiredStateStore
from flocker_async.node.service import NodeConvergence
from flocker_async.route import MemoryNetwork
from flocker_async.ssh import (
    KeyAuthorizer, add_known_host, generate_key, public_key_line)
from flocker_async.volume import MemoryStoragePool
from flocker_async.wire import Peer

from ..testtools.peers import CALLER, TARGET, make_ipeers_tests
from ..testtools.ssh import MemoryTCPNetwork, forbid_global_reactor
from .test_convergence import IMAGE, drive
from .test_node_service import PORT, InMemoryNode


def memory_fixture(testcase):
    clock = Clock()
    root = testcase.mktemp()
    deployers = {}
    shared = MemoryPeers(deployers)
    for address in (CALLER, TARGET):
        pool = MemoryStoragePool(clock, os.path.join(root, address), address)
        deployers[address] = Deployer(
            address, MemoryDockerClient(images=[IMAGE]), pool, MemoryNetwork(),
            shared.as_node(address), clock, resolve=defer.succeed)
    state = os.path.join(root, "target-state")
    convergence = NodeConvergence(deployers[TARGET], DesiredStateStore(state), clock,
                                  3600, KeyAuthorizer({}), deployers[TARGET].peers,
                                  os.path.join(root, "known_hosts"))
    shared.syncs[TARGET] = lambda caller, generation: convergence.answer_sync(
        generation).addCallback(lambda answer: answer[0])
    peers = deployers[CALLER].peers
    peers.set_peers([Peer(TARGET, PORT, "k", "k")])
    return peers, deployers, lambda d: drive(clock, d)


def ssh_fixture(testcase):
    forbid_global_reactor(testcase)
    net = MemoryTCPNetwork()
    nodes = {}
    operator = generate_key()  # nobody's: only peers talk here
    for address in (CALLER, TARGET):
        nodes[address] = InMemoryNode(testcase, net, address, operator)
        testcase.addCleanup(nodes[address].listen(net).stopListening)
    caller, target = nodes[CALLER], nodes[TARGET]
    target.convergence.set_peer_keys([Peer(CALLER, PORT, public_key_line(caller.keys.node_key),
                                           public_key_line(caller.keys.host_key))])
    add_known_host(caller.convergence.known_hosts_path, TARGET, PORT, target.keys.host_key)
    caller.peers.set_peers([Peer(TARGET, PORT, public_key_line(target.keys.node_key),
                                 public_key_line(target.keys.host_key))])
    return caller.peers, {a: n.deployer for a, n in nodes.items()}, net.run


MemoryPeersTests = make_ipeers_tests(memory_fixture)
SSHPeersTests = make_ipeers_tests(ssh_fixture)
