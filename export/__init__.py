"""Export: folded SavedModel → ONNX / TFLite / SavedModel model repository."""
