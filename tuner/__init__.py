"""tuner: Optuna studies over PyTorch trainables, tracked in MLflow."""
