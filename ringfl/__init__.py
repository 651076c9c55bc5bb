"""ringfl: privacy-preserving distributed learning (Distributed Selective SGD) over a coordinator or a ring."""

__version__ = "0.1.0"
