"""
What a node must do to reach the desired deployment, as values.

Each change is a small frozen value providing ``IStateChange``: it says what
it does (``summary``) and does it (``run(deployer, context)``) with the
node's backends, which the deployer only holds.  ``calculate_changes`` is
the pure function that plans a node's changes; the plan is the truth, so
``flocker-deploy --dry-run`` prints the very steps a node will run,
including each step of a move and its undo.
"""

from ._calculate import calculate_changes, container_application, move_out
from ._compose import (
    NO_CHANGE,
    InParallel,
    ReportProblem,
    Sequentially,
    UndoOnFailure,
    in_parallel,
    leaves,
    sequentially,
)
from ._containers import StartApplication, StopApplication, WaitForPort
from ._interfaces import (
    ChangeFailed,
    IDeployer,
    IStateChange,
    NotOwner,
    RunContext,
)
from ._failover import (
    PushReplica,
    TakeOver,
    TakeOverPlan,
    YieldVolume,
    freshness,
    plan_takeovers,
    stale_claim,
)
from ._routes import HELD, LOCAL, Route, SetRoute, SetRoutes, proxy_to
from ._volumes import (
    CreateVolume,
    FinalPush,
    HandOver,
    MakeWritable,
    PushVolume,
    RecordOwner,
    WaitForHandoff,
    newest_common,
    push_newest_snapshot,
    push_snapshot,
)

# The steps that push, hand over, take over or wait for a volume: while a
# run has one of these for a volume, its standby replication is paused.
MOVING_STEPS = (PushVolume, FinalPush, HandOver, WaitForHandoff, PushReplica,
                TakeOver, YieldVolume, RecordOwner)

__all__ = [
    "IStateChange", "IDeployer", "RunContext", "ChangeFailed", "NotOwner",
    "Sequentially", "InParallel", "sequentially", "in_parallel", "NO_CHANGE",
    "UndoOnFailure", "ReportProblem", "leaves",
    "Route", "LOCAL", "HELD", "proxy_to", "SetRoutes", "SetRoute",
    "CreateVolume", "MakeWritable", "PushVolume", "FinalPush", "HandOver",
    "RecordOwner", "WaitForHandoff", "newest_common", "push_newest_snapshot",
    "push_snapshot", "MOVING_STEPS",
    "TakeOverPlan", "plan_takeovers", "freshness", "stale_claim",
    "TakeOver", "PushReplica", "YieldVolume",
    "StartApplication", "StopApplication", "WaitForPort",
    "calculate_changes", "container_application", "move_out",
]
