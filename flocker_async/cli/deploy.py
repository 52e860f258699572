"""
flocker-deploy: put applications on the nodes a deployment file names.

    flocker-deploy --validate DEPLOYMENT APPLICATION
"""

from __future__ import annotations

import sys
from typing import List, Optional, TextIO

from twisted.python import usage

from .. import __version__
from ..config import ConfigurationError, load_configuration

EXIT_OK = 0
EXIT_CONFIGURATION = 1
EXIT_NODE_FAILED = 2
EXIT_USAGE = 64  # EX_USAGE from sysexits.h


class DeployOptions(usage.Options):
    synopsis = "Usage: flocker-deploy [options] DEPLOYMENT_FILE APPLICATION_FILE"
    longdesc = (
        "Deploy the applications of APPLICATION_FILE onto the nodes that "
        "DEPLOYMENT_FILE names (Flocker 0.3/0.4 version-1 formats; the "
        "application file may also be in fig/compose form).  Both files are "
        "validated first and every problem is reported as "
        "FILE: KEY.PATH: message; nothing reaches a node unless both are "
        "valid.  Exit status: 0 success, 1 invalid configuration, 2 a node "
        "failed or could not be reached, 64 wrong usage.")

    optFlags = [
        ["validate", None,
         "Only check both files and print a summary; contact no node."],
        ["version", None, "Print the version and exit."],
    ]

    def opt_version(self):
        print("flocker-deploy %s" % (__version__,))
        sys.exit(EXIT_OK)

    def parseArgs(self, deployment_file, application_file):
        self["deployment_file"] = deployment_file
        self["application_file"] = application_file


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def validate(options, out: TextIO, err: TextIO) -> int:
    try:
        deployment = load_configuration(
            options["deployment_file"], options["application_file"])
    except ConfigurationError as e:
        for problem in e.problems:
            err.write("%s\n" % (problem,))
        err.write("%s in %s and %s; nothing was deployed.\n" % (
            _plural(len(e.problems), "problem"),
            options["deployment_file"], options["application_file"]))
        return EXIT_CONFIGURATION
    apps = sorted(app.name for _, app in deployment.applications())
    out.write("valid: %s (%s) on %s (%s)\n" % (
        _plural(len(apps), "application"), ", ".join(apps) or "none",
        _plural(len(deployment.nodes), "node"),
        ", ".join(sorted(n.hostname for n in deployment.nodes)) or "none"))
    return EXIT_OK


def main(argv: Optional[List[str]] = None, out: TextIO = None, err: TextIO = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    options = DeployOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        err.write("flocker-deploy: %s\n%s\n" % (e, options.synopsis))
        err.write("Run flocker-deploy --help for the options.\n")
        return EXIT_USAGE
    if options["validate"]:
        return validate(options, out, err)
    err.write("flocker-deploy: deploying to nodes is not available in this "
              "version yet; use --validate to check the files.\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
