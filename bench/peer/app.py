"""The benchmark's peer: infergate's first-party endpoints (`digits`, `embed`) written the usual
Python way, FastAPI + uvicorn + onnxruntime, for bench/run.sh.

What it mirrors, so both systems do the same work per request:
- auth: an API key dependency (`X-API-Key` or `Authorization: Bearer`), checked in constant time;
- limits: a slowapi limit per key (huge, in memory: checked, never reached);
- validation: Pydantic models with the plugins' rules (64 pixels in 0..16; `input` one string or
  1..64 strings of at most 8192 characters), 422 otherwise;
- models: the same ONNX files (models/digits/digits.onnx, models/minilm/model.onnx) on ONNX
  Runtime, one session per worker process with intra_op_num_threads=1 (infergate: 2 sessions,
  one per compute slot, 1 thread each), loaded once at start-up (lifespan);
- pre/post-processing: BERT WordPiece tokenisation from plugins/embedding/vocab.txt (lowercase,
  accents stripped, BertPreTokenizer, [CLS] ... [SEP], truncated to 256), mean pooling over the
  attention mask and L2 normalisation; digits: argmax of the scores;
- responses: the same JSON shapes ({"digit", "scores"}; OpenAI-style embeddings list).

Tuning: uvicorn[standard] (uvloop, httptools), one worker per core, no access log. The handlers
are `async def` and run inference inline on the event loop: with one ONNX Runtime thread per
worker this measured faster than plain `def` handlers on FastAPI's thread pool (digits 5.2k vs
3.8k req/s, embed 257 vs 237 req/s at 16 connections on the 2-core benchmark machine).

Run (bench/run.sh does): BENCH_API_KEY=... uvicorn app:app --app-dir bench/peer --workers 2
Environment: BENCH_API_KEY (required), INFERGATE_ROOT (default: two levels up).
"""
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
import onnxruntime as ort
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

ROOT = Path(os.environ.get("INFERGATE_ROOT", Path(__file__).resolve().parents[2]))
API_KEY = os.environ["BENCH_API_KEY"]
# Checked on every request, never reached: the same rule as bench/infergate.toml.
LIMIT = "100000000/minute"
MAX_TOKENS = 256
MAX_INPUTS = 64
MAX_INPUT_CHARS = 8192
DEFAULT_MODEL = "all-minilm-l6-v2"

# ---- auth and limits ------------------------------------------------------------------------

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
bearer = HTTPBearer(auto_error=False)


def require_api_key(
    request: Request,
    key: Annotated[Optional[str], Depends(api_key_header)],
    token: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)],
) -> str:
    presented = key or (token.credentials if token else None)
    if presented is None or not secrets.compare_digest(presented.encode(), API_KEY.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong API key")
    request.state.api_key = presented
    return presented


def limit_key(request: Request) -> str:
    # Runs after the dependency above (slowapi checks inside the endpoint's wrapper).
    return getattr(request.state, "api_key", None) or request.client.host


limiter = Limiter(key_func=limit_key, storage_uri="memory://", headers_enabled=False)

# ---- models ---------------------------------------------------------------------------------

sessions: dict[str, ort.InferenceSession] = {}
tokenizer: Optional[Tokenizer] = None


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bert_tokenizer(vocab: Path) -> Tokenizer:
    """The all-MiniLM-L6-v2 tokenizer (what its tokenizer.json declares), from vocab.txt."""
    tok = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    return tok


@asynccontextmanager
async def lifespan(_app: FastAPI):
    global tokenizer
    sessions["digits"] = session(ROOT / "models/digits/digits.onnx")
    sessions[DEFAULT_MODEL] = session(ROOT / "models/minilm/model.onnx")
    tokenizer = bert_tokenizer(ROOT / "plugins/embedding/vocab.txt")
    yield


app = FastAPI(title="infergate benchmark peer", lifespan=lifespan)
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

# ---- digits ---------------------------------------------------------------------------------


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pixels: Annotated[list[Annotated[float, Field(ge=0, le=16)]], Field(min_length=64, max_length=64)]


class Classification(BaseModel):
    digit: int
    scores: list[float]


class Hello(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Greeting(BaseModel):
    message: str


# The greeting of examples/hello (and its Python and JavaScript twins), at every mount the
# benchmark gives them (hello-rs, hello-py-warm, ...). The key is the benchmark's one, of tenant
# `bench`.
@app.post("/{mount}/greet", response_model=Greeting)
@limiter.limit(LIMIT)
async def greet(request: Request, mount: str, body: Hello, _key: Annotated[str, Depends(require_api_key)]):
    return Greeting(message=f"Hello, {body.name}! (tenant bench)")


@app.post("/digits/classify", response_model=Classification)
@limiter.limit(LIMIT)
async def classify(request: Request, body: ClassifyRequest, _key: Annotated[str, Depends(require_api_key)]):
    pixels = np.asarray(body.pixels, dtype=np.float32).reshape(1, 64)
    scores = sessions["digits"].run(["scores"], {"pixels": pixels})[0][0]
    if scores.shape != (10,):
        raise HTTPException(status_code=502, detail=f"expected 10 scores, got {scores.shape}")
    return Classification(digit=int(np.argmax(scores)), scores=scores.tolist())


# ---- embed ----------------------------------------------------------------------------------

Text = Annotated[str, Field(max_length=MAX_INPUT_CHARS)]


class EmbeddingsRequest(BaseModel):
    input: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]]
    model: Optional[str] = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


@app.post("/embed/embeddings", response_model=EmbeddingsResponse)
@limiter.limit(LIMIT)
async def embeddings(request: Request, body: EmbeddingsRequest, _key: Annotated[str, Depends(require_api_key)]):
    texts = [body.input] if isinstance(body.input, str) else body.input
    model = body.model or DEFAULT_MODEL
    if model not in sessions or model == "digits":
        raise HTTPException(status_code=404, detail=f"model `{model}` not found")
    encoded = [e.ids for e in tokenizer.encode_batch(texts)]
    rows, width = len(encoded), max(len(ids) for ids in encoded)
    input_ids = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    hidden = sessions[model].run(
        ["last_hidden_state"],
        {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
    )[0]
    keep = mask.astype(np.float32)[:, :, None]
    summed = (hidden * keep).sum(axis=1)
    pooled = summed / np.maximum(keep.sum(axis=1), np.float32(1e-9))
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    total = sum(len(ids) for ids in encoded)
    return EmbeddingsResponse(
        data=[Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(pooled)],
        model=model,
        usage=Usage(prompt_tokens=total, total_tokens=total),
    )
