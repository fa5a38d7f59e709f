"""A minimal FastAPI + ONNX Runtime server, written the way most users would: a pydantic body with
a nested list, one session per worker. Run: EE559_BENCH_ONNX=model.onnx uvicorn ...:app"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
_session: ort.InferenceSession | None = None


class Body(BaseModel):
    image: list[list[float]]


def session() -> ort.InferenceSession:
    global _session
    if _session is None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        _session = ort.InferenceSession(os.environ["EE559_BENCH_ONNX"], so, providers=["CPUExecutionProvider"])
    return _session


@app.post("/classify")
def classify(body: Body) -> dict:
    x = np.asarray(body.image, dtype=np.float32)[None, None]
    (logits,) = session().run(None, {"image": x})
    return {"label": int(logits[0].argmax()), "logits": logits[0].tolist()}
