"""
``twistd flocker-node``: the ``Options`` and ``makeService`` the dropin in
twisted/plugins/flocker_node.py names.  Configuration the operator can fix
is reported as ``FILE: KEY.PATH: message`` lines and exit status 1, never
as a traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from twisted.application.service import IService

from ..config import ConfigurationError
from ..ssh._keys import KeyFileError
from ._config import load_node_configuration
from ._options import NodeOptions

__all__ = ["Options", "makeService"]

Options = NodeOptions


def _refuse(lines) -> NoReturn:
    for line in lines:
        print(line, file=sys.stderr)
    print("flocker-node: not started; fix the problems above.", file=sys.stderr)
    raise SystemExit(1)


def makeService(options: NodeOptions) -> IService:
    try:
        configuration = load_node_configuration(options["config"])
    except ConfigurationError as e:
        _refuse(e.problems)
    # Imported here so --help never imports the service and its backends.
    from .service import make_node_service
    try:
        return make_node_service(configuration)
    except ConfigurationError as e:  # the operator keys file, for instance
        _refuse(e.problems)
    except KeyFileError as e:
        _refuse([e])
