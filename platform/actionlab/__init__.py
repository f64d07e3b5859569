"""actionlab: train, tune, track and register efficient video action-recognition models on Ray."""

__version__ = "0.1.0"
