"""Checks an edgeseg ONNX file with the reference tools.

usage: check_onnx.py MODEL.onnx INPUT.f32 EXPECTED.f32

INPUT.f32 holds the 1x3xHxW input and EXPECTED.f32 the logits another runtime
(tract) produced for it, both as raw little-endian float32. The model must pass
onnx.checker.check_model(full_check=True), and onnxruntime's logits must match
EXPECTED (max abs difference and argmax agreement). Prints one JSON line and
exits non-zero on any failure.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    model_path, input_path, expected_path = sys.argv[1:4]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    x = np.fromfile(input_path, dtype="<f4").reshape(inp.shape)
    (logits,) = session.run(None, {inp.name: x})
    expected = np.fromfile(expected_path, dtype="<f4").reshape(logits.shape)
    diff = float(np.abs(logits - expected).max())
    agreement = float((logits.argmax(1) == expected.argmax(1)).mean())
    report = {
        "input": inp.name,
        "output": out.name,
        "shape": list(logits.shape),
        "max_abs_diff": diff,
        "argmax_agreement": agreement,
        "classes": json.loads(meta.get("edgeseg.class_names", "[]")),
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
    }
    print(json.dumps(report))
    if inp.name != "image" or out.name != "logits":
        print("input/output names are not image/logits", file=sys.stderr)
        return 1
    if diff > 1e-3 or agreement < 0.999:
        print("onnxruntime disagrees with the expected logits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
