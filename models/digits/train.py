#!/usr/bin/env python3
"""Train a small MLP on scikit-learn's 8x8 digits and export it to ONNX (no torch).

Outputs (paths relative to the repo root):
  models/digits/digits.onnx        input  `pixels` f32 [batch, 64], raw values 0..16
                                   output `scores` f32 [batch, 10], softmax probabilities
  tests/data/digits_holdout.json   {"accuracy": float, "samples": [{"pixels": [64 ints], "label": int}]}

Deterministic: running it twice writes byte-identical files.
Usage: python3 models/digits/train.py
"""
import os

# Single-threaded BLAS so training is bit-for-bit reproducible.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

ROOT = Path(__file__).resolve().parents[2]
ONNX_PATH = ROOT / "models" / "digits" / "digits.onnx"
HOLDOUT_PATH = ROOT / "tests" / "data" / "digits_holdout.json"
SCALE = 1.0 / 16.0  # pixel values 0..16 -> 0..1, applied inside the graph


def train():
    digits = load_digits()
    X = digits.data.astype(np.int64)  # raw 0..16
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(
        hidden_layer_sizes=(64,),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        max_iter=1000,
        random_state=0,
    )
    clf.fit(X_tr * SCALE, y_tr)
    assert list(clf.classes_) == list(range(10))
    return clf, X_te, y_te


def export(clf):
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    inits = [
        numpy_helper.from_array(np.array([SCALE], dtype=np.float32), "scale"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "B1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(b2, "B2"),
    ]
    nodes = [
        helper.make_node("Mul", ["pixels", "scale"], ["x"], name="scale_pixels"),
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h_pre"], name="fc1"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="relu1"),
        helper.make_node("Gemm", ["h", "W2", "B2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="infergate-digits-train",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
    )
    model.doc_string = "MLP 64-64(relu)-10 on sklearn load_digits; input raw pixels 0..16"
    onnx.checker.check_model(model, full_check=True)
    ONNX_PATH.parent.mkdir(parents=True, exist_ok=True)
    ONNX_PATH.write_bytes(model.SerializeToString(deterministic=True))


def main():
    clf, X_te, y_te = train()
    sk_pred = clf.predict(X_te * SCALE)
    sk_acc = float(np.mean(sk_pred == y_te))
    export(clf)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    scores = sess.run(["scores"], {"pixels": X_te.astype(np.float32)})[0]
    assert scores.shape == (len(X_te), 10) and scores.dtype == np.float32
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    onnx_pred = scores.argmax(axis=1)
    onnx_acc = float(np.mean(onnx_pred == y_te))
    assert np.array_equal(onnx_pred, sk_pred), "ONNX predictions differ from sklearn"
    assert onnx_acc == sk_acc, (onnx_acc, sk_acc)

    HOLDOUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"pixels": [int(v) for v in px], "label": int(lbl)}, separators=(",", ":"))
        for px, lbl in zip(X_te, y_te)
    ]
    text = '{"accuracy": %s,\n "samples": [\n  %s\n ]}\n' % (json.dumps(onnx_acc), ",\n  ".join(lines))
    json.loads(text)  # sanity
    HOLDOUT_PATH.write_text(text)

    print(
        f"digits: held-out accuracy {onnx_acc:.6f} ({int((onnx_pred == y_te).sum())}/{len(y_te)}), "
        f"sklearn {sk_acc:.6f}, onnxruntime agrees; wrote {ONNX_PATH.relative_to(ROOT)} "
        f"({ONNX_PATH.stat().st_size} bytes) and {HOLDOUT_PATH.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
