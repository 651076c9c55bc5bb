"""Model specs (no MXNet) and the runtime that builds them on MXNet's one thread.

``ringfl.model.spec`` validates and hashes specs; ``ringfl.model.gluon`` is the only module that
imports MXNet; ``ringfl.model.runtime`` runs it on a dedicated thread for trio code.
"""

from ringfl.model.spec import (
    ModelSpec,
    builtin_specs,
    describe,
    load_spec,
    parse_spec,
    spec_from_json,
)

__all__ = ["ModelSpec", "builtin_specs", "describe", "load_spec", "parse_spec", "spec_from_json"]
