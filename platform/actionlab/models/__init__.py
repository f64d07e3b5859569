"""Trained models: their folders' metadata, importing official checkpoints, scoring videos
(`predict`), the MLflow pyfunc model and serving."""
