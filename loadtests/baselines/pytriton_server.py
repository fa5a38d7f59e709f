"""The Triton baseline of `make bench`: Triton's HTTP front end (KServe v2) and dynamic batcher, with
PyTriton's Python backend handing each batch to this process, where ONNX Runtime runs it. It is
not Triton's native ONNX Runtime backend, which PyTriton's wheel does not carry (docs/benchmarks.md).
Runs in .venv-triton (PyTriton pins numpy<2).

Usage: python pytriton_server.py HTTP_PORT INSTANCES NAME=ONNX_PATH=MAX_BATCH_SIZE [...]
Each model gets INSTANCES model instances (an ONNX Runtime session of one thread each, as each of
the service's workers has) behind one dynamic batcher of MAX_BATCH_SIZE rows with no queue delay
(the service's batcher does not wait either). Triton's metrics are on HTTP_PORT + 2."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _dims(shape: list) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape[1:])  # without the batch axis


def _infer_func(onnx_path: str):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {k: v.astype(np.float32, copy=False) for k, v in inputs.items()}
        return dict(zip(names, sess.run(names, feed)))

    return infer, sess


def main() -> None:
    port, instances = int(sys.argv[1]), int(sys.argv[2])
    models = [(name, *rest.rsplit("=", 1)) for name, rest in (arg.split("=", 1) for arg in sys.argv[3:])]
    print(f"onnxruntime {ort.__version__}", flush=True)
    config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2, log_verbose=0)
    with Triton(config=config) as triton:
        for name, onnx_path, max_batch in models:
            funcs = [_infer_func(onnx_path) for _ in range(instances)]
            sess = funcs[0][1]
            triton.bind(
                model_name=name,
                infer_func=[f for f, _ in funcs],
                inputs=[Tensor(name=i.name, dtype=np.float32, shape=_dims(i.shape)) for i in sess.get_inputs()],
                outputs=[Tensor(name=o.name, dtype=np.float32, shape=_dims(o.shape)) for o in sess.get_outputs()],
                config=ModelConfig(
                    batching=True,
                    max_batch_size=int(max_batch),
                    batcher=DynamicBatcher(max_queue_delay_microseconds=0),
                ),
            )
        triton.serve()


if __name__ == "__main__":
    main()
