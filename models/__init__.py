"""Networks (MLP and convolutional autoencoders) and the ABO_clusterer estimator."""

from models.abo import ABO_clusterer, ABOClusterer
from models.build import build_autoencoder, count_parameters
from models.conv import ConvAutoencoder
from models.mlp import MLPAutoencoder

__all__ = [
    "ABO_clusterer",
    "ABOClusterer",
    "ConvAutoencoder",
    "MLPAutoencoder",
    "build_autoencoder",
    "count_parameters",
]
