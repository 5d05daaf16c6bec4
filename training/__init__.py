"""Training: the model zoo, data loaders, the training loop and BatchNorm folding."""
