"""cnnserve: train small CNN classifiers, fold and export them, serve them over gRPC."""

__version__ = "0.1.0"
