"""inspector: visual inspection trained on good parts only."""

__version__ = "0.1.0"
