"""onnxruntime sessions, the bounded executor and the on-device profiler."""
