"""Which MLflow store a stage logs to: params.yaml's, unless the user exported MLFLOW_TRACKING_URI."""

from __future__ import annotations

import mlflow

from components.config import Tracking
from components.tracking import tracking_uri, use_store


def test_one_store_in_use_never_overrides_the_next_params_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; it must not pass for the user's override.
        use_store(Tracking(uri=f"sqlite:///{tmp_path}/first.db"))
        assert tracking_uri(Tracking(uri=f"sqlite:///{tmp_path}/second.db")).endswith("second.db")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/shared.db")
        assert tracking_uri(Tracking(uri=f"sqlite:///{tmp_path}/second.db")).endswith("shared.db")
    finally:
        mlflow.set_tracking_uri("")
