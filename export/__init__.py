"""ONNX export behind a parity gate, model cards, and the BentoML model store."""
