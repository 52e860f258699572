"""
``flocker-deploy --dry-run`` prints each node's real plan: for a move, every
step of the source and of the destination, in order, with the undo.
"""

from twisted.trial.unittest import SynchronousTestCase

from flocker_async.cli.deploy import _steps
from flocker_async.deploy import NodeInfo, dry_run
from flocker_async.model import (
    Application, ApplicationState, AttachedVolume, Deployment, DockerImage, Node,
    NodeState, Port, VolumeState)
from flocker_async.wire import Peer

N1, N2 = "10.1.0.1", "10.1.0.2"
WEB = Application(name="web", image=DockerImage("busybox"), ports=[Port(80, 8080)],
                  volume=AttachedVolume("/data"))


def info(state):
    return NodeInfo(state.hostname, state.hostname, state,
                    Peer(state.hostname, 4522, "k", "k"), "/flocker", {})


class DryRunTests(SynchronousTestCase):
    def test_move_prints_every_step_per_node(self):
        source = NodeState(N1, [ApplicationState("web", True, "old-digest")],
                           [VolumeState("web", N1, True)])
        infos = {N1: info(source), N2: info(NodeState(N2))}
        plans = dry_run(Deployment(nodes=[Node(N1, []), Node(N2, [WEB])]), infos)
        self.assertEqual(_steps(plans[N1]), [
            "route web local",
            "push volume web to %s (bulk copy, while it runs)" % (N2,),
            "route web held",
            "stop web",
            "make volume web read-only and push the final increment to %s" % (N2,),
            "  if that fails, undo: make volume web writable; start web; "
            "wait for web to listen; route web local",
            "hand volume web over to %s (epoch 1)" % (N2,),
            "route web proxy to %s" % (N2,),
        ])
        self.assertEqual(_steps(plans[N2]), [
            "route web proxy to %s" % (N1,),
            "wait for %s to hand volume web over" % (N1,),
            "route web held",
            "start web",
            "wait for web to listen",
            "route web local",
        ])
