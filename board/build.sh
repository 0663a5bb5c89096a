#!/bin/sh
# Build the board's vendored ES module from the pinned npm packages (package-lock.json):
#   relay/static/yjs-bundle.min.js        yjs + y-websocket + y-indexeddb (+ y-protocols, lib0), minified
#   relay/static/yjs-bundle.LICENSES.txt  the MIT licence texts of everything inside it
#   relay/static/yjs-bundle.sha256        sha256sum of both (check: cd relay/static && sha256sum -c yjs-bundle.sha256)
#
#   sh board/build.sh           rebuild and overwrite the committed files (then commit them)
#   sh board/build.sh --check   rebuild into a temporary folder; exit 1 if it differs from the committed files
#
# Needs node and npm (the npm registry, or its cache). The relay never builds anything: the output is committed.
# Two builds from the same lockfile give byte-identical files.
set -eu
cd "$(dirname "$0")"
out=../relay/static
mode=${1:-build}
case "$mode" in
  build) dest=$out ;;
  --check) dest=$(mktemp -d) ; trap 'rm -rf "$dest"' EXIT ;;
  *) echo "usage: sh board/build.sh [--check]" >&2 ; exit 2 ;;
esac

npm ci --silent --no-audit --no-fund --ignore-scripts

version() { node -p "require('./node_modules/$1/package.json').version"; }
banner="/*! accord board bundle: yjs $(version yjs), y-websocket $(version y-websocket), y-indexeddb $(version y-indexeddb), \
y-protocols $(version y-protocols), lib0 $(version lib0). MIT licensed, (c) Kevin Jahns and contributors; \
see yjs-bundle.LICENSES.txt */"

./node_modules/.bin/esbuild entry.js --bundle --format=esm --platform=browser --target=es2020 --minify \
  --legal-comments=none --charset=utf8 --log-level=warning --banner:js="$banner" --outfile="$dest/yjs-bundle.min.js"

{
  echo "Licences of the code bundled in yjs-bundle.min.js (built by board/build.sh from board/package-lock.json)."
  for pkg in yjs y-websocket y-indexeddb y-protocols lib0; do
    echo
    echo "==== $pkg $(version "$pkg") ($(node -p "require('./node_modules/$pkg/package.json').license")) ===="
    echo
    cat "node_modules/$pkg/LICENSE"
  done
} > "$dest/yjs-bundle.LICENSES.txt"

(cd "$dest" && sha256sum yjs-bundle.min.js yjs-bundle.LICENSES.txt > yjs-bundle.sha256)

if [ "$mode" = --check ]; then
  for f in yjs-bundle.min.js yjs-bundle.LICENSES.txt yjs-bundle.sha256; do
    cmp -s "$dest/$f" "$out/$f" || { echo "board bundle: $out/$f differs from a fresh build; run sh board/build.sh" >&2; exit 1; }
  done
  echo "board bundle: committed files match a fresh build"
else
  cat "$dest/yjs-bundle.sha256"
fi
