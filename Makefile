# The two commands of the README:
#   make serve   build and run the host on its embedded default (first-party plugins, bundled models),
#                as shipped: the `dist` profile (release plus link-time optimisation)
#   make test    run every test
# Both install what they need first (wasm target, cmake and libclang for llama.cpp, Python model
# tooling, the embedding and chat models; for the tests, Chromium, componentize-py and the
# JavaScript SDK's npm packages).
# And: make bench   the benchmark suite (bench/run.sh; knobs and results: bench/RESULTS.md)
#      make pgo     for deployments that can train it: `dist` plus profile-guided optimisation
#                   trained on the benchmark's routes (bench/pgo.sh; needs wrk), at
#                   target/pgo/infergate; `BENCH_PGO=1 make bench` measures it

PYTHON ?= python3
# ONNX Runtime for the optional backend and its tests: the library inside the PyPI wheel.
ORT_DYLIB_PATH ?= $(shell $(PYTHON) -c 'import onnxruntime, glob, os; print((glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")) or [""])[0])' 2>/dev/null)
export ORT_DYLIB_PATH

.PHONY: serve test setup test-tools models bench pgo

serve: setup
	cargo run --profile dist -p infergate -- serve

HOST_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')

test: setup test-tools
	cargo test --release --workspace
	cargo test --release --manifest-path plugins/Cargo.toml --workspace \
		--target $(HOST_TARGET) --target-dir target/wasm
	$(PYTHON) -m pytest -q plugins/sdk-python/tests tests/deploy
	node --test plugins/sdk-js/test/

# llama.cpp (the language-model backend) is built from source by the llama-cpp-sys-2 crate: it
# needs cmake and libclang. Installed from the distribution when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: models
	@command -v cmake >/dev/null 2>&1 && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends cmake libclang-dev; }
	rustup target add wasm32-wasip2
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r models/requirements.txt -r tests/requirements.txt

# What only the tests use: a headless browser (the CORS test runs a page in Chromium), a load
# balancer (the rolling-restart test runs three hosts behind HAProxy), and the JavaScript SDK's
# build tools (componentize-js, from npm, pinned by its package-lock.json).
test-tools:
	@command -v chromium >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	@command -v haproxy >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends haproxy; }
	@command -v npm >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	npm ci --prefix plugins/sdk-js --no-audit --no-fund --loglevel=error

models:
	models/fetch.sh

bench:
	bench/run.sh

pgo: setup
	bench/pgo.sh
