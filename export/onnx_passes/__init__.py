"""The graph passes `onnx_optimize.optimize` runs on tf2onnx's output, one module per kind of
rewrite; each pass takes the model, rewrites it in place and returns how many rewrites it made.
Each is exact: the optimized graph computes what the converted one did."""
