"""What MLflow runs to load a packaged earshot model (models from code: the package holds code, not a pickle)."""

from mlflow.models import set_model

from components.serving import AudioModel

set_model(AudioModel())
