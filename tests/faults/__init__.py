"""
Fault tests, each module on a lab of its own.  Only one of those labs is up
at a time: the machines these run on have two cores, and a lab left idle
beside another slows every daemon of both.
"""

import os

_UP: dict = {}

KEEP_VARIABLES = ("FLOCKER_FAULTS_KEEP_LAB", "FLOCKER_FAILOVER_FAULTS_KEEP_LAB")


def take_turns(module: str, lab, registry: dict) -> None:
    """
    ``module`` is about to bring ``lab`` up: take down every other module's
    lab first (its ``registry`` is emptied, so it is built again if its
    tests run later), unless a lab is being kept for a post-mortem.
    """
    if not any(os.environ.get(v) for v in KEEP_VARIABLES):
        for other, (other_lab, other_registry) in list(_UP.items()):
            if other != module:
                other_lab.down()
                other_registry.clear()
                del _UP[other]
    _UP[module] = (lab, registry)
