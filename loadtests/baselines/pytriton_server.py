"""Triton (through PyTriton) serving an ONNX model with ONNX Runtime behind dynamic batching, on the
KServe v2 HTTP protocol. Runs in .venv-triton (PyTriton pins numpy<2).
Usage: python pytriton_server.py MODEL_NAME ONNX_PATH HTTP_PORT"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    name, onnx_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    @batch
    def infer(image: np.ndarray):
        (logits,) = sess.run(None, {"image": image.astype(np.float32, copy=False)})
        return {"logits": logits}

    config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.float32, shape=(1, 28, 28))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
