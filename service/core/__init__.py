"""The pure core: no FastAPI, no Starlette, no onnxruntime."""
