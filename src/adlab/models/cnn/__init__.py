"""One-class CNN classifier baseline (seed project), trained against synthetic anomalies."""

from adlab.models.cnn.lightning_model import CNNModule
from adlab.models.cnn.torch_model import CNNClassifier

__all__ = ["CNNClassifier", "CNNModule"]
