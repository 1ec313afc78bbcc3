#!/usr/bin/env bash
# Builds a Python infergate plugin into a WebAssembly component with componentize-py.
#
#   plugins/sdk-python/build.sh APP_DIR OUT.wasm [WIT_DIR]
#
# APP_DIR holds the app module (app.py, or $APP_MODULE.py) and anything else it imports;
# the SDK (this directory's `infergate` package) is put on the path after it. WIT_DIR
# defaults to the repository's wit/ (found relative to this script). Needs componentize-py
# (pip install componentize-py==0.25.1).
set -euo pipefail

usage() {
    echo "usage: $0 APP_DIR OUT.wasm [WIT_DIR]" >&2
    echo "  env: APP_MODULE (default: app), WIT_WORLD (default: plugin)" >&2
    exit 2
}

[[ $# -ge 2 && $# -le 3 ]] || usage

sdk_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app_dir="$(cd "$1" && pwd)"
out="$2"
wit_dir="${3:-$sdk_dir/../../wit}"
module="${APP_MODULE:-app}"
world="${WIT_WORLD:-plugin}"

[[ -f "$app_dir/$module.py" || -f "$app_dir/$module/__init__.py" ]] || {
    echo "error: no module '$module' in $app_dir" >&2
    exit 1
}
[[ -d "$wit_dir" ]] || { echo "error: no WIT directory at $wit_dir" >&2; exit 1; }
command -v componentize-py >/dev/null || {
    echo "error: componentize-py not found (pip install componentize-py==0.25.1)" >&2
    exit 1
}

mkdir -p "$(dirname "$out")"
# The SDK directory goes on the path itself (not the package), so `import infergate` works.
componentize-py -d "$wit_dir" -w "$world" componentize "$module" \
    -p "$app_dir" -p "$sdk_dir" -o "$out"
