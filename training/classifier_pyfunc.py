"""A registered classifier's (XGBoost or logistic) MLflow entry point, logged as code (models from code)
rather than pickled: MLflow runs this file when it loads the model (see
:func:`training.registry.log_and_register`)."""

import mlflow

from training.registry import ClassifierPyfunc

mlflow.models.set_model(ClassifierPyfunc())
