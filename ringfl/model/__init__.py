"""Model specs (no MXNet) and the runtime that builds them on MXNet's one thread.

``ringfl.model.spec`` validates and hashes specs; ``ringfl.model.gluon`` (with its helpers
``batches`` and ``per_example``, the only modules that import MXNet) builds and trains nets;
``ringfl.model.runtime`` runs them on a dedicated thread for trio code.
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
