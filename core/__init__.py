"""What every stage shares: the model card, export specs, the model store, image preprocessing,
the ONNX Runtime session and text-generation state. Imports no torch and nothing else of the
project; each module imports only what it needs (card and spec: the standard library alone)."""
