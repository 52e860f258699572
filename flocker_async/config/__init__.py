"""
Configuration files -> model.

Two files describe a cluster, in the formats of Flocker 0.3/0.4:

* the application file, ``version: 1`` with ``applications: {NAME: {...}}``
  (``_v1``), or the fig/compose form: services at the top level, or under
  ``services:`` (``_fig``);
* the deployment file, ``version: 1`` with ``nodes: {ADDRESS: [NAME...]}``
  and optionally ``standby: {NAME: [ADDRESS...]}`` (``_deployment``, which
  also checks the two files against each other).

Every problem found in either file is collected and reported together as
one ``ConfigurationError``, each naming the file, the key path
(``applications.db.ports[0].external``) and what was expected.  Nothing is
handed to a node until both files are valid.  ``_serialise`` writes the
model back as documents.  The checks themselves live in
``flocker_async.validation``.
"""

from ..model import link_env_prefix
from ..validation import (
    NAME_PATTERN,
    NAME_RULE,
    ConfigurationError,
    Problem,
    check_name,
    parse_duration,
    parse_size,
)
from ._common import MAX_CPU_SHARES, MIN_MEM_LIMIT
from ._deployment import (
    application_names,
    configuration_from_documents,
    configuration_from_objects,
    load_configuration,
    normalise_node_address,
)
from ._serialise import applications_to_document, deployment_to_document, dump_yaml

__all__ = [
    "Problem",
    "ConfigurationError",
    "NAME_PATTERN",
    "NAME_RULE",
    "MIN_MEM_LIMIT",
    "MAX_CPU_SHARES",
    "check_name",
    "parse_size",
    "parse_duration",
    "link_env_prefix",
    "normalise_node_address",
    "load_configuration",
    "configuration_from_documents",
    "configuration_from_objects",
    "applications_to_document",
    "deployment_to_document",
    "dump_yaml",
    "application_names",
]
