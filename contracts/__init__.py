"""The contracts every stage shares: the model repository (config.json), the run directory, the
names of the served signature, and the error type a user can cause.

Standard library and ONNX only, and nothing else of ours: training, export, serving and bench all
import it, and the server's import closure must stay free of TensorFlow.
"""
