"""
The soak's checker (bench/_soak/checker.py) on made-up observations: each
promise found broken when it is, and held when it holds.
"""

from twisted.trial.unittest import SynchronousTestCase

from . import BENCH  # noqa: F401  (puts bench/ on the path)
from _soak.checker import (  # noqa: E402
    Copy, Process, Window, check_containers, check_docker_processes, check_epochs,
    check_growth,
    check_orphans, check_retention, check_routes, check_writable, check_writes,
    parse_acked_lines, parse_row_counts, summary_lines)

ADDRESSES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
PORTS = {"db": 3306, "web": 8080}


class WriteTests(SynchronousTestCase):
    acked = {1: (100.0, "a"), 2: (101.0, "a"), 3: (105.0, "b"), 4: (109.0, "c")}

    def test_all_present(self):
        result = check_writes("db", self.acked, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, [], 5)
        self.assertEqual(result.violations(), [])
        self.assertEqual(result.acknowledged, 4)

    def test_lost(self):
        result = check_writes("db", self.acked, {1: 1, 2: 1, 4: 1}, [], 4)
        self.assertEqual(result.lost, (3,))
        self.assertIn("1 acknowledged write(s) lost", result.violations()[0])

    def test_lost_inside_a_window_is_reported_apart(self):
        window = Window("db", start=104.0, end=106.0, cycle=1, node="n1")
        result = check_writes("db", self.acked, {1: 1, 2: 1, 4: 1}, [window], 4)
        self.assertEqual((result.lost, result.lost_in_window), ((), (3,)))
        self.assertEqual(result.violations(), [])

    def test_window_of_another_application_does_not_count(self):
        window = Window("web", start=104.0, end=106.0, cycle=1, node="n1")
        result = check_writes("db", self.acked, {1: 1, 2: 1, 4: 1}, [window], 4)
        self.assertEqual(result.lost, (3,))

    def test_unknown_window_start(self):
        """A take-over that could not say: everything before its power-off
        may be lost, nothing after."""
        window = Window("db", start=None, end=106.0, cycle=1, node="n1")
        result = check_writes("db", self.acked, {}, [window], 4)
        self.assertEqual((result.lost, result.lost_in_window), ((4,), (1, 2, 3)))

    def test_duplicates_and_unknown(self):
        result = check_writes("db", self.acked, {1: 2, 2: 1, 3: 1, 4: 1, 9: 1}, [], 5)
        self.assertEqual(result.duplicated, ((1, 2),))
        self.assertEqual(result.unknown, (9,))
        self.assertEqual(len(result.violations()), 2)

    def test_parse(self):
        self.assertEqual(parse_acked_lines("1\n2\n2\n\nx\n"), {1: 1, 2: 2})
        self.assertEqual(parse_row_counts("1\t1\n7\t2\nbad\n"), {1: 1, 7: 2})


class PlacementTests(SynchronousTestCase):
    where = {"db": "n1", "web": "n2"}

    def test_containers(self):
        self.assertEqual(check_containers(
            {"n1": ["flocker-db"], "n2": ["flocker-web"], "n3": []}, self.where), [])
        problems = check_containers(
            {"n1": ["flocker-db", "flocker-web"], "n2": [], "n3": ["flocker-old"]},
            self.where)
        self.assertEqual(problems, [
            "web is deployed to n2 but does not run there",
            "web runs on n1, which it is not deployed to",
            "n3 runs container flocker-old of no deployed application"])

    def states(self, **writable):
        def volume(node, app):
            return {"name": app, "writable": writable.get("%s_%s" % (node, app), False),
                    "owner": ADDRESSES[self.where[app]], "epoch": 2}
        return {n: {"volumes": [volume(n, a) for a in ("db", "web")]} for n in ADDRESSES}

    def test_writable(self):
        self.assertEqual(check_writable(self.states(n1_db=True, n2_web=True),
                                        ADDRESSES, self.where), [])
        problems = check_writable(self.states(n1_db=True, n3_db=True, n2_web=True),
                                  ADDRESSES, self.where)
        self.assertEqual(problems, ["volume db: writable on n1, n3, expected on n1 only"])
        problems = check_writable(self.states(n1_db=True), ADDRESSES, self.where)
        self.assertEqual(problems, ["volume web: writable on no node, expected on n2 only"])

    def test_epochs(self):
        states = self.states()
        self.assertEqual(check_epochs(states, self.where), [])
        states["n3"]["volumes"][0]["epoch"] = 5
        self.assertEqual(len(check_epochs(states, self.where)), 1)


def _nat(*rules):
    return "*nat\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"


def _dnat(chain, app, to):
    return ('-A %s -p tcp -m addrtype --dst-type LOCAL -m tcp --dport %d -m comment '
            '--comment "flocker %s" -j DNAT --to-destination %s' % (
                chain, PORTS[app], app, to))


class RouteTests(SynchronousTestCase):
    where = {"db": "n1", "web": "n2"}

    def test_right(self):
        saved = _nat(*[_dnat(c, a, ADDRESSES[self.where[a]])
                       for c in ("FLOCKER-PREROUTING", "FLOCKER-OUTPUT") for a in ("db",)])
        self.assertEqual(check_routes("n2", saved, self.where, ADDRESSES, PORTS), [])

    def test_wrong_target_missing_and_held(self):
        saved = _nat(_dnat("FLOCKER-PREROUTING", "db", "10.0.0.3"),
                     _dnat("FLOCKER-OUTPUT", "web", "10.0.0.2"),
                     '-A FLOCKER-HOLD-PREROUTING -p tcp -m tcp --dport 3306 --syn -m '
                     'addrtype --dst-type LOCAL -m comment --comment "flocker db" -j DROP')
        problems = check_routes("n2", saved, self.where, ADDRESSES, PORTS)
        self.assertEqual(problems, [
            "n2: FLOCKER-PREROUTING forwards db (port 3306) to 10.0.0.3, expected 10.0.0.1",
            "n2: FLOCKER-OUTPUT forwards db (port 3306) to nowhere, expected 10.0.0.1",
            "n2: FLOCKER-OUTPUT forwards web (port 8080) to 10.0.0.2, expected nowhere",
            "n2: port 3306 of db is still held (FLOCKER-HOLD-PREROUTING)"])


class RetentionTests(SynchronousTestCase):
    def test_replica_keeps_three(self):
        snaps = tuple("flocker-%d" % i for i in range(4))
        problems = check_retention("db", [Copy("n1", True, snaps[-1:]),
                                          Copy("n2", False, snaps[-3:]),
                                          Copy("n3", False, snaps)])
        self.assertEqual(problems, ["volume db: the replica on n3 keeps 4 generated "
                                    "snapshots, retention keeps 3"])

    def test_live_copy_keeps_only_bases(self):
        snaps = tuple("flocker-%d" % i for i in range(6))
        # The standby's newest snapshot is the base of the next increment;
        # one taken since is not on it yet.
        ok = check_retention("db", [Copy("n1", True, snaps[4:]),
                                    Copy("n2", False, snaps[2:5])])
        self.assertEqual(ok, [])
        problems = check_retention("db", [Copy("n1", True, snaps),
                                          Copy("n2", False, snaps[2:5])])
        self.assertEqual(len(problems), 1)
        self.assertIn("keeps 4 snapshot(s) no other copy needs", problems[0])
        # A stale copy that shares an old snapshot holds them all back.
        self.assertEqual(check_retention("db", [
            Copy("n1", True, snaps), Copy("n2", False, snaps[3:]),
            Copy("n3", False, snaps[:1])]), [])


class GrowthTests(SynchronousTestCase):
    def test_steady(self):
        """Each round adds one and prunes one: no growth."""
        before = [Copy("n1", True, ("flocker-5",)), Copy("n2", False, ("flocker-4", "flocker-5"))]
        after = [Copy("n1", True, ("flocker-9",)), Copy("n2", False, ("flocker-8", "flocker-9"))]
        self.assertEqual(check_growth("db", before, after, 10), [])

    def test_pinned_by_a_stale_copy(self):
        live = tuple("flocker-%d" % i for i in range(12))
        before = [Copy("n2", True, live[:6]), Copy("n3", False, live[3:6]),
                  Copy("n1", False, ("flocker-0",))]
        after = [Copy("n2", True, live), Copy("n3", False, live[9:]),
                 Copy("n1", False, ("flocker-0",))]
        problems = check_growth("db", before, after, 12)
        self.assertEqual(problems, [
            "volume db: the live copy on n2 keeps ever more snapshots: 6, then 12 12 s "
            "later; the copy on n1 shares only its 12th newest, so every snapshot since "
            "is kept"])


class ProcessTests(SynchronousTestCase):
    def test_orphans(self):
        recv = Process(10, "100", 5, ("zfs", "recv", "-u", "flsk-n1/db"))
        ssh = Process(11, "100", 1, ("ssh", "-p", "4522", "root@10.0.0.2", "state"))
        other = Process(12, "100", 1, ("zfs", "list", "otherpool/x"))
        again = Process(10, "200", 5, ("zfs", "recv", "-u", "flsk-n1/db"))
        problems = check_orphans([recv, ssh, other], [recv, ssh, other],
                                 ["flsk-n1"], list(ADDRESSES.values()), 20)
        self.assertEqual(len(problems), 2)
        self.assertIn("orphan zfs process", problems[0])
        self.assertIn("orphan ssh process", problems[1])
        # The same pid started again: another process.
        self.assertEqual(check_orphans([recv], [again], ["flsk-n1"], [], 20), [])

    def test_docker_processes(self):
        running = {"a" * 64}
        self.assertEqual(check_docker_processes(
            "n1", running, {7: "a" * 64}, {8: "a" * 64, 9: None}, [3], []), [])
        problems = check_docker_processes(
            "n1", running, {7: "b" * 64}, {8: "b" * 64}, [3, 4],
            [Process(5, "1", 1, ("docker", "-H", "unix:///x", "start"))])
        self.assertEqual(len(problems), 4)


class SummaryTests(SynchronousTestCase):
    def test_lines(self):
        self.assertEqual(summary_lines(15, 40, {"partition": 2, "kill-daemon": 3}, 1234, 0,
                                       23.44), [
            "soak: faults by kind: kill-daemon 3, partition 2",
            "soak: 15 seed, 40 operations, 5 faults, 1234 acknowledged writes, 0 lost, "
            "longest unavailability 23.4 s"])
