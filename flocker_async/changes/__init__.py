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
)

__all__ = [
    "IStateChange", "IDeployer", "RunContext", "ChangeFailed", "NotOwner",
    "Sequentially", "InParallel", "sequentially", "in_parallel", "NO_CHANGE",
    "UndoOnFailure", "ReportProblem", "leaves",
    "Route", "LOCAL", "HELD", "proxy_to", "SetRoutes", "SetRoute",
    "CreateVolume", "MakeWritable", "PushVolume", "FinalPush", "HandOver",
    "RecordOwner", "WaitForHandoff", "newest_common", "push_newest_snapshot",
    "StartApplication", "StopApplication", "WaitForPort",
    "calculate_changes", "container_application", "move_out",
]
