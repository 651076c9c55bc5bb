"""Peer topologies: who exchanges updates with whom, and with which mixing weights.

A :class:`Topology` comes from a YAML description (schema in docs/topology.md), from a graph file
written by another tool (decentralizepy edge list, networkx edge list or adjacency list, GraphML),
or from :func:`generate` for experiments. ``model`` holds the class and its mixing matrix,
``schema`` the YAML schema, ``generators`` the graph builders, ``formats`` the file loaders and
``render`` the text report and drawing.
"""

from ringfl.topology.formats import load_topology
from ringfl.topology.generators import GENERATOR_KINDS
from ringfl.topology.model import (
    MH,
    MIN_NODES,
    RANDOM_TRIES,
    SCHEMES,
    TOLERANCE,
    Topology,
    averaging_error,
    mixing_matrix,
    period_product,
    relink_without,
    spectral_gap,
)
from ringfl.topology.render import describe, describe_schedule, plot
from ringfl.topology.schema import from_mapping, generate

__all__ = [
    "GENERATOR_KINDS",
    "MH",
    "MIN_NODES",
    "RANDOM_TRIES",
    "SCHEMES",
    "TOLERANCE",
    "Topology",
    "averaging_error",
    "describe",
    "describe_schedule",
    "from_mapping",
    "generate",
    "load_topology",
    "mixing_matrix",
    "period_product",
    "plot",
    "relink_without",
    "spectral_gap",
]
