"""MLflow "models from code" entry for the champion: MLflow runs this file to build the pyfunc.

Logging the model by this file's path instead of a pickled object means loading it never unpickles
code (MLflow's recommended way for custom pyfunc models); the class itself lives in tune/champion.py.
"""

import mlflow
from tune.champion import ClusterModel

mlflow.models.set_model(ClusterModel())
