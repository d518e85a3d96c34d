"""qfsdk.converters: PyTorch models and checkpoints to ONNX."""
