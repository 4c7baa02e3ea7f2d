"""Checks an edgeseg ONNX file with the reference tools.

usage: check_onnx.py MODEL.onnx INPUT.f32 EXPECTED.f32 [MIN_AGREEMENT [MAX_ABS_DIFF]]

INPUT.f32 holds the 1x3xHxW input and EXPECTED.f32 the logits another runtime
(tract) produced for it, both as raw little-endian float32. The model must pass
onnx.checker.check_model(full_check=True), and onnxruntime's logits must match
EXPECTED (argmax agreement at least MIN_AGREEMENT, default 0.999, and max abs
difference at most MAX_ABS_DIFF, default 1e-3; an int8 model is checked with
looser bounds, since runtimes may round a requantisation differently). Prints
one JSON line and exits non-zero on any failure.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    model_path, input_path, expected_path = sys.argv[1:4]
    min_agreement = float(sys.argv[4]) if len(sys.argv) > 4 else 0.999
    max_abs_diff = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3
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
    if diff > max_abs_diff or agreement < min_agreement:
        print("onnxruntime disagrees with the expected logits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
