"""
The package as a user installs it (a wheel, not this checkout): twistd must
find the flocker-node plugin, and the console scripts must exist.
"""

import os
import subprocess
import sys
import tempfile
import shutil

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class WheelTests(SynchronousTestCase):
    def test_installed_wheel_provides_plugin_and_scripts(self):
        work = tempfile.mkdtemp(prefix="fa-wheel-")
        self.addCleanup(shutil.rmtree, work, True)
        wheels = os.path.join(work, "wheels")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "-w", wheels, ROOT],
                       check=True, capture_output=True)
        [wheel] = os.listdir(wheels)
        target = os.path.join(work, "site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", target, os.path.join(wheels, wheel)],
                       check=True, capture_output=True)
        self.assertTrue(os.path.isfile(
            os.path.join(target, "twisted", "plugins", "flocker_node.py")))
        self.assertFalse(os.path.exists(
            os.path.join(target, "twisted", "plugins", "__init__.py")))
        # Run from a directory without the checkout on the path.
        probe = ("import sys; sys.path = [p for p in sys.path if p.rstrip('/') != %r];"
                 "sys.path.insert(0, %r);"
                 "from twisted.plugin import getPlugins;"
                 "from twisted.application.service import IServiceMaker;"
                 "names = [p.tapname for p in getPlugins(IServiceMaker)];"
                 "import flocker_async; print(flocker_async.__file__);"
                 "print('flocker-node' in names)") % (ROOT, target)
        result = subprocess.run([sys.executable, "-c", probe], cwd=work,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        installed_from, found = result.stdout.split()
        self.assertTrue(installed_from.startswith(target), installed_from)
        self.assertEqual(found, "True")
        with open(os.path.join(target, [d for d in os.listdir(target)
                                        if d.endswith(".dist-info")][0],
                               "entry_points.txt")) as f:
            entry_points = f.read()
        self.assertIn("flocker-deploy = flocker_async.cli.deploy:main", entry_points)
        self.assertIn("flocker-lab = flocker_async.cli.lab:main", entry_points)
