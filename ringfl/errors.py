"""User-facing errors.

Every problem caused by user input (a config, a spec, a topology file, a data path) raises a
subclass of :class:`RingflError` whose message is one line naming the problem; the CLI prints it
as ``error: <message>`` and exits with status 2 instead of a traceback.
"""


class RingflError(Exception):
    """Base for errors the user can fix by changing their input."""


class ConfigError(RingflError):
    """A configuration file or flag is invalid."""


class SpecError(RingflError):
    """A model spec is invalid (unknown layer, impossible shape, missing custom class...)."""


class DataError(RingflError):
    """A data source is missing, corrupt, or cannot be partitioned as asked."""


class TopologyError(RingflError):
    """A topology file or generator description is invalid."""


class RunAborted(RingflError):
    """The run cannot go on as configured (no quorum within ``join_timeout``, every peer gone)."""
