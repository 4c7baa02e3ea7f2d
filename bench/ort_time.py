"""Inference time of an ONNX model in onnxruntime (CPU), the reference for
bench/inference.sh: python ort_time.py MODEL THREADS FRAMES.

Prints one JSON line: median, 10th and 90th percentile milliseconds over FRAMES
runs after 3 warm-up runs, on a normalised-looking random input of the model's
fixed shape, with intra-op threads = THREADS and sequential execution (one
frame at a time, as on the board)."""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, threads, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
for _ in range(3):
    session.run(None, {inp.name: x})
times = []
for _ in range(frames):
    t = time.perf_counter()
    session.run(None, {inp.name: x})
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
at = lambda q: times[round((len(times) - 1) * q)]
print(json.dumps({"engine": "onnxruntime " + ort.__version__, "model": model, "threads": threads,
                  "frames": frames, "median_ms": at(0.5), "p10_ms": at(0.1), "p90_ms": at(0.9)}))
