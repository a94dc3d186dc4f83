"""sdmcl: continual learning with Sparse Distributed Memory MLPs."""

__version__ = "0.1.0"
