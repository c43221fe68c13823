"""The registered recommender's MLflow entry point, logged as code (models from code) rather than
pickled: MLflow runs this file when it loads the model."""

import mlflow

from training.recommenders.store import RecommenderPyfunc

mlflow.models.set_model(RecommenderPyfunc())
