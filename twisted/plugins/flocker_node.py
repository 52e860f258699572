# The twistd dropin for ``twistd flocker-node``.  Twisted imports every
# dropin to list plugins, so this names the module as a string and imports
# nothing of flocker_async (nor the reactor) until the plugin is run.
# There must be no __init__.py in twisted/ or twisted/plugins/ here.

from twisted.application.service import ServiceMaker

flockerNode = ServiceMaker(
    "flocker-node",
    "flocker_async.node.tap",
    "The flocker_async node daemon: keeps this node's containers, ZFS "
    "volumes and proxies converged, serves flocker-deploy over SSH.",
    "flocker-node",
)
