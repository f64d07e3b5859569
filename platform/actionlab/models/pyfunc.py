"""The MLflow pyfunc model of a registered actionlab version ("models from code": nothing pickled).

MLflow executes this file when it loads a version (`mlflow.pyfunc.load_model`, `mlflow models
serve`): the class below rebuilds the workload from the version's `checkpoint/meta.json` and loads
`checkpoint/model.safetensors` with actionlab's own loader, then scores like `actionlab predict`.
`registry.register` logs it with the actionlab and workloads packages as code paths.

Inputs (signature: one unnamed string column): a DataFrame (its `video` column, else the first),
a list of paths or URIs, or one path. A uint8 batch (B, T, H, W, 3) of sampled frames is scored too when the model
is called without schema enforcement (`load_model(...).unwrap_python_model().predict(None, batch)`):
MLflow signatures cannot declare a path column and a tensor side by side.
Params: `top_k` (default 5). Output: one row per input with `video`, `labels`, `label_ids`,
`probs` (top-k, best first) and `error` (empty when the video decoded).
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class ActionlabVideoModel(mlflow.pyfunc.PythonModel):
    """Video paths / URIs or uint8 clips -> top-k classes and probabilities."""

    def load_context(self, context):
        from actionlab.models import folder

        # The model folder (model.safetensors + meta.json) that `registry.log_pyfunc_model` attached.
        self.loaded = folder.load_model(context.artifacts[folder.CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd
        import torch

        from actionlab.models import predict as predict_mod

        top_k = int((params or {}).get("top_k") or 5)
        if isinstance(model_input, (np.ndarray, torch.Tensor)) and model_input.ndim == 5:
            rows = [{"video": "", **r} for r in predict_mod.predict_clips(self.loaded, model_input, top_k=top_k)]
        else:
            rows = predict_mod.predict_videos(self.loaded, _videos(model_input), top_k=top_k)
        return pd.DataFrame(
            [
                {
                    "video": r["video"],
                    "labels": [t["class"] for t in r.get("top", [])],
                    "label_ids": [t["label"] for t in r.get("top", [])],
                    "probs": [t["prob"] for t in r.get("top", [])],
                    "error": r.get("error", ""),
                }
                for r in rows
            ],
            columns=["video", "labels", "label_ids", "probs", "error"],
        )


def _videos(model_input) -> list[str]:
    """A DataFrame (column `video`, else the first), a dict, a list or one string -> list of paths."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = "video" if "video" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if isinstance(model_input, dict):
        return _videos(pd.DataFrame(model_input))
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return [str(v) for v in model_input]
    raise ValueError(
        f"unsupported input {type(model_input).__name__}: pass a DataFrame with a 'video' column, a list of "
        "video paths/URIs, or a uint8 batch (B, T, H, W, 3)"
    )


set_model(ActionlabVideoModel())
