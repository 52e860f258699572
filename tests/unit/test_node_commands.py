"""
The node's SSH commands driven directly with a fake session and a fake
clock: what each does when its client goes away.
"""

import gc
import os

from twisted.internet import defer
from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flocker_async.docker import MemoryDockerClient
from flocker_async.model import DockerImage
from flocker_async.node._deployer import Deployer
from flocker_async.node._memory_peers import MemoryPeers
from flocker_async.node._persist import DesiredStateStore
from flocker_async.node.service import NodeConvergence, _command_error, node_commands
from flocker_async.route import MemoryNetwork
from flocker_async.ssh import (
    OPERATOR, PEER, CommandError, KeyAuthorizer, NodeKeys, fingerprint, generate_key,
    public_key_line)
from flocker_async.volume import MemoryStoragePool, VolumeName
from flocker_async.wire import Peer

from twisted.python.failure import Failure

N1 = "10.1.0.1"
# A peer of N1's deployment, and its node key.
N2 = "10.1.0.2"
N2_KEY = generate_key()


class FakeSession:
    """What a command sees of its SSH channel; stdin is fed by the test."""

    def __init__(self, role=PEER, key=N2_KEY):
        self.role = role
        self.key_fingerprint = fingerprint(key)
        self.peer = None
        self.stdout = []
        self.stdin_done = Deferred()
        self.consumer = None

    def write(self, data):
        self.stdout.append(data)

    def stream_stdin(self, consumer):
        # As the channel's inbound stream: the consumer may stop it, which
        # ends the stream with a failure.
        self.consumer = consumer
        consumer.registerProducer(_StdinProducer(self.stdin_done), True)
        return self.stdin_done


class _StdinProducer:
    def __init__(self, done):
        self.done = done

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        if not self.done.called:
            self.done.errback(ConnectionError("the consumer stopped reading"))


def make_node(testcase):
    clock = Clock()
    root = testcase.mktemp()
    os.makedirs(root)
    pool = MemoryStoragePool(clock, os.path.join(root, "pool"), N1)
    deployer = Deployer(N1, MemoryDockerClient(images=[DockerImage("busybox")]),
                        pool, MemoryNetwork(), MemoryPeers({}), clock,
                        resolve=defer.succeed)
    known_hosts = os.path.join(root, "known_hosts")
    convergence = NodeConvergence(deployer, DesiredStateStore(os.path.join(root, "state")),
                                  clock, 3600, KeyAuthorizer({}), deployer.peers,
                                  known_hosts)
    convergence.set_peer_keys([Peer(N2, 4522, public_key_line(N2_KEY),
                                    public_key_line(generate_key()))])
    keys = NodeKeys(host_key=generate_key(), node_key=generate_key())
    return clock, deployer, convergence, node_commands(convergence, keys, 4522)


class ReceiveCancellationTests(SynchronousTestCase):
    def test_sender_gone_then_receive_ends(self):
        """
        The sender goes away mid-stream: the command is cancelled (the
        channel closed) and the receive is cut.  When the receive then
        ends, nothing fires the cancelled command a second time (which
        raised AlreadyCalledError, an unhandled error in the daemon log,
        and lost the receive's own failure).
        """
        clock, deployer, convergence, commands = make_node(self)
        session = FakeSession()
        running = commands["receive"].run(PEER, ["web"], session)
        clock.advance(0)
        self.assertIsNotNone(session.consumer)
        session.consumer.write(b"x" * 1000)
        running.cancel()
        failures = []
        running.addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        failures[0].trap(CancelledError)
        # The server then sees the channel's stdin end: the receive ends.
        if not session.stdin_done.called:  # the cut receive stopped reading
            session.stdin_done.errback(ConnectionError("channel closed"))
        clock.advance(1)
        del running
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(AlreadyCalledError), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        # Nothing was received into a volume.
        self.assertEqual(self.successResultOf(deployer.pool.enumerate()), [])


class CommandErrorTests(SynchronousTestCase):
    def test_cancelled_stays_cancelled(self):
        """A command cancelled because its client went away is not turned
        into a command error (to be written on a channel nobody reads)."""
        result = _command_error(Failure(CancelledError()))
        self.assertIsInstance(result, Failure)
        self.assertTrue(result.check(CancelledError))
        self.assertFalse(result.check(CommandError))

    def test_other_errors_become_command_errors(self):
        with self.assertRaises(CommandError) as caught:
            _command_error(Failure(RuntimeError("boom")))
        self.assertEqual(str(caught.exception.message), "boom")

    def test_snapshots_cancelled_by_client(self):
        clock, deployer, convergence, commands = make_node(self)
        blocked = Deferred()
        deployer.pool.snapshots = lambda name: blocked
        running = commands["snapshots"].run(OPERATOR, ["web"], FakeSession(OPERATOR))
        running.cancel()
        self.failureResultOf(running, CancelledError)


class DiscardSetAsideTests(SynchronousTestCase):
    def test_discard_only_by_explicit_command(self):
        clock, deployer, convergence, commands = make_node(self)
        pool = deployer.pool
        volume = VolumeName("web")
        self.successResultOf(pool.create(volume))
        kept = self.successResultOf(pool.set_aside(volume, "20261203T110207-000Z"))
        session = FakeSession(OPERATOR)
        bad = commands["discard-set-aside"].run(OPERATOR, ["web", "../etc"], session)
        self.failureResultOf(bad, CommandError)
        missing = commands["discard-set-aside"].run(OPERATOR, ["web", "nope"], session)
        self.assertIn("nope", str(self.failureResultOf(missing, CommandError).value))
        self.assertEqual(len(self.successResultOf(pool.set_asides())), 1)
        done = commands["discard-set-aside"].run(OPERATOR, ["web", kept.label], session)
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(self.successResultOf(pool.set_asides()), [])
        self.assertNotIn(PEER, commands["discard-set-aside"].roles)


class RequestIdentityTests(SynchronousTestCase):
    def test_lease_refuses_non_ascii_deploy_ids(self):
        """str.isalnum takes any script; a deploy id is ASCII."""
        clock, deployer, convergence, commands = make_node(self)
        for bad in ("dé", "x\u0661", "ｆｕｌｌ", "a b", "x" * 65):
            self.assertRaises(CommandError, commands["lease"].run, OPERATOR, [bad],
                              FakeSession(OPERATOR))
        self.assertIsNone(convergence.lease)

    def test_apply_refuses_non_ascii_deploy_id(self):
        from flocker_async.wire import decode_apply
        from flocker_async.config import ConfigurationError
        import json as _json
        from .test_hostile import valid_request
        document = valid_request()
        decode_apply(_json.dumps(document).encode())
        document["deploy_id"] = "dé"
        error = self.assertRaises(ConfigurationError, decode_apply,
                                  _json.dumps(document).encode())
        self.assertIn("deploy_id", str(error))

    def test_invalid_result_lists_at_most_a_hundred_problems(self):
        """However bad a request, its one result line stays small."""
        from flocker_async.config import Problem
        from flocker_async.node.service import MAX_PROBLEMS_SENT, _problem_lines
        problems = [Problem("apply", "applications.a%d" % i, "bad") for i in range(5000)]
        lines = _problem_lines(problems)
        self.assertEqual(len(lines), MAX_PROBLEMS_SENT + 1)
        self.assertEqual(lines[-1], "... and %d more problems" % (5000 - MAX_PROBLEMS_SENT,))
        self.assertEqual(_problem_lines(problems[:3]), [str(p) for p in problems[:3]])
