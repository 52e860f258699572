"""The command line of ``twistd flocker-node``."""

from __future__ import annotations

import textwrap

from twisted.python import usage

from ._config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SSH_PORT,
    DEFAULT_STATE_DIRECTORY,
    OPERATOR_KEYS_FILE,
)

__all__ = ["NodeOptions"]


class NodeOptions(usage.Options):
    synopsis = "[--config PATH]"

    longdesc = """\
Run the flocker_async node daemon.  It keeps this node's Docker containers,
ZFS volumes and iptables proxies as the operator's last deployment asked,
and moves volumes to and from peer nodes.  flocker-deploy talks to it over
SSH (port %(port)d by default; public-key authentication only, a fixed set of
commands, no shell).

Configuration is read from node.yml (--config, default %(config)s);
only 'address' is required.
State lives in the state directory (default %(state)s, mode 0700): the SSH
host key and the node key (created on first start), the desired state last
received from flocker-deploy (reloaded and converged to on every start) and,
by default, the '%(keys)s' file of the operators' public keys.

Under systemd run it as: twistd --nodaemon --pidfile= flocker-node
(see config/flocker-node.service; readiness is reported with sd_notify).
""" % {"port": DEFAULT_SSH_PORT, "config": DEFAULT_CONFIG_PATH, "state": DEFAULT_STATE_DIRECTORY,
       "keys": OPERATOR_KEYS_FILE}

    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH,
         "The node configuration file (YAML; see config/node.yml)."],
    ]

    def getUsage(self, width=None) -> str:
        # usage.Options would run the paragraphs of longdesc together and
        # break paths at their hyphens.
        longdesc, self.longdesc = self.longdesc, ""
        try:
            text = super().getUsage(width)
        finally:
            self.longdesc = longdesc
        paragraphs = [textwrap.fill(" ".join(p.split()), width or 79,
                                    break_on_hyphens=False, break_long_words=False)
                      for p in longdesc.split("\n\n") if p.strip()]
        return text + "\n" + "\n\n".join(paragraphs) + "\n"

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config needs the path of node.yml")
