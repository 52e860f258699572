"""
The IStateChange contract (Flocker's make_istatechange_tests), run for every
change type: it provides the interface, compares and hashes by value, and
says what it does in one line.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from flocker_async import changes
from flocker_async.changes import (
    HELD, LOCAL, CreateVolume, FinalPush, HandOver, IStateChange, InParallel,
    MakeWritable, PushReplica, PushVolume, RecordOwner, ReportProblem, Sequentially,
    SetRoute, SetRoutes, StartApplication, StopApplication, TakeOver, UndoOnFailure,
    WaitForHandoff, WaitForPort, YieldVolume, proxy_to)
from flocker_async.model import Application, DockerImage, Port

APP = Application(name="web", image=DockerImage("busybox"), ports=[Port(80, 8080)])
OTHER = Application(name="db", image=DockerImage("busybox"))


def make_istatechange_tests(klass, make_one, make_other):
    """A TestCase class for change type ``klass``: ``make_one()`` builds a
    value (twice, for equality) and ``make_other()`` a different one."""

    class Tests(SynchronousTestCase):
        def test_provides_interface(self):
            self.assertTrue(verifyObject(IStateChange, make_one()))

        def test_is_the_class(self):
            self.assertIsInstance(make_one(), klass)

        def test_equal_and_hashed_by_value(self):
            self.assertEqual(make_one(), make_one())
            self.assertEqual(hash(make_one()), hash(make_one()))
            self.assertEqual(len({make_one(), make_one()}), 1)

        def test_different_values_differ(self):
            self.assertNotEqual(make_one(), make_other())

        def test_summary(self):
            summary = make_one().summary
            self.assertIsInstance(summary, str)
            self.assertTrue(summary.strip())
            self.assertNotIn("\n", summary)

    Tests.__name__ = "%sTests" % (klass.__name__,)
    return Tests


CASES = [
    (SetRoutes, lambda: SetRoutes([("web", (8080,), LOCAL)]),
     lambda: SetRoutes([("web", (8080,), HELD)])),
    (SetRoute, lambda: SetRoute("web", (8080,), proxy_to("10.0.0.2")),
     lambda: SetRoute("web", (8080,), proxy_to("10.0.0.3"))),
    (CreateVolume, lambda: CreateVolume("web", 1 << 30), lambda: CreateVolume("web")),
    (MakeWritable, lambda: MakeWritable("web"), lambda: MakeWritable("db")),
    (PushVolume, lambda: PushVolume("web", "10.0.0.2"), lambda: PushVolume("web", "10.0.0.3")),
    (FinalPush, lambda: FinalPush("web", "10.0.0.2"), lambda: FinalPush("db", "10.0.0.2")),
    (HandOver, lambda: HandOver("web", "10.0.0.2"), lambda: HandOver("web", "10.0.0.2", 4)),
    (RecordOwner, lambda: RecordOwner("web", "10.0.0.2"),
     lambda: RecordOwner("web", "10.0.0.2", 3)),
    (WaitForHandoff, lambda: WaitForHandoff("web", "10.0.0.1"),
     lambda: WaitForHandoff("web", "10.0.0.3")),
    (StartApplication, lambda: StartApplication(APP), lambda: StartApplication(OTHER)),
    (StopApplication, lambda: StopApplication("web"), lambda: StopApplication("db")),
    (WaitForPort, lambda: WaitForPort(APP), lambda: WaitForPort(OTHER)),
    (ReportProblem, lambda: ReportProblem("web", "no owner"),
     lambda: ReportProblem("web", "something else")),
    (TakeOver, lambda: TakeOver("web", 2), lambda: TakeOver("web", 3)),
    (PushReplica, lambda: PushReplica("web", "10.0.0.2"),
     lambda: PushReplica("web", "10.0.0.3")),
    (YieldVolume, lambda: YieldVolume("web", "10.0.0.2"), lambda: YieldVolume("web", None)),
    (UndoOnFailure,
     lambda: UndoOnFailure(FinalPush("web", "10.0.0.2"), MakeWritable("web"), "web",
                           "10.0.0.2"),
     lambda: UndoOnFailure(FinalPush("web", "10.0.0.2"), StopApplication("web"), "web",
                           "10.0.0.2")),
    (Sequentially, lambda: Sequentially([StopApplication("a"), StopApplication("b")]),
     lambda: Sequentially([StopApplication("b"), StopApplication("a")])),
    (InParallel, lambda: InParallel([StopApplication("a"), StopApplication("b")]),
     lambda: InParallel([StopApplication("a")])),
]

for _klass, _one, _other in CASES:
    globals()["%sTests" % (_klass.__name__,)] = make_istatechange_tests(_klass, _one, _other)
del _klass, _one, _other


class EveryChangeCoveredTests(SynchronousTestCase):
    def test_every_change_type_runs_the_contract(self):
        """A new change type cannot be added without its contract tests."""
        exported = {getattr(changes, name) for name in changes.__all__}
        types = {value for value in exported if isinstance(value, type)
                 and IStateChange.implementedBy(value)}
        self.assertEqual(types, {klass for klass, _, _ in CASES})
