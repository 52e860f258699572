"""
The flocker-lab commands the soak's faults are made of (kill-dockerd,
start-dockerd, restart-zfs), against a recording fake lab.
"""

import io

from twisted.trial.unittest import SynchronousTestCase

from flocker_async.cli.lab import EXIT_OK, EXIT_USAGE, main


class FakeLab:
    def __init__(self, running=True):
        self.calls = []
        self.running = running

    def kill_dockerd(self, node):
        self.calls.append(("kill_dockerd", node))
        return self.running

    def start_dockerd(self, node):
        self.calls.append(("start_dockerd", node))
        return not self.running

    def restart_zfs(self):
        self.calls.append(("restart_zfs",))


def run(argv, lab):
    out, err = io.StringIO(), io.StringIO()
    return main(argv, out, err, lab), out.getvalue(), err.getvalue()


class FaultCommandTests(SynchronousTestCase):
    def test_kill_dockerd(self):
        lab = FakeLab()
        self.assertEqual(run(["kill-dockerd", "n2"], lab),
                         (EXIT_OK, "killed dockerd on n2\n", ""))
        self.assertEqual(run(["kill-dockerd", "n2"], FakeLab(running=False))[1],
                         "dockerd on n2 was not running\n")
        self.assertEqual(lab.calls, [("kill_dockerd", "n2")])

    def test_start_dockerd(self):
        lab = FakeLab(running=False)
        self.assertEqual(run(["start-dockerd", "n1"], lab),
                         (EXIT_OK, "started dockerd on n1\n", ""))
        self.assertEqual(run(["start-dockerd", "n1"], FakeLab())[1],
                         "dockerd on n1 was running\n")
        self.assertEqual(lab.calls, [("start_dockerd", "n1")])

    def test_restart_zfs(self):
        lab = FakeLab()
        self.assertEqual(run(["restart-zfs"], lab), (EXIT_OK, "zfs-fuse restarted\n", ""))
        self.assertEqual(lab.calls, [("restart_zfs",)])

    def test_node_names_checked(self):
        status, _, err = run(["kill-dockerd", "bad"], FakeLab())
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("not a lab node name", err)
