"""Serving: the gRPC inference server on ONNX Runtime. Never imports TensorFlow."""
