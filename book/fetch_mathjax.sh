#!/usr/bin/env bash
# Vendor MathJax 3 into book/_static/mathjax/ so that formulas render without network.
#
# Sphinx would load MathJax from a CDN; the book ships a local copy instead (see _config.yml,
# sphinx.config.mathjax_path). What the es5 "tex-mml-chtml" component needs at run time:
#   - es5/tex-mml-chtml.js                  the component (TeX + MathML input, CommonHTML output, menu)
#   - es5/output/chtml/fonts/woff-v2/*.woff  the fonts CommonHTML loads via @font-face, relative to the script
#   - es5/input/tex/extensions/*.js          TeX packages loaded on demand by `autoload`
#                                            (\boldsymbol, \cancel, \color, mathtools, physics, ...)
# Not shipped: the speech/explorer accessibility modules (a11y/, sre/), loaded only when a reader turns them
# on in MathJax's context menu.
#
# Usage (needs npm and the npm registry; the result is committed, so builds never need this):
#   book/fetch_mathjax.sh [version]      # default: 3.2.2
set -euo pipefail
version="${1:-3.2.2}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/_static/mathjax"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "mathjax@$version" >/dev/null && tar xzf mathjax-*.tgz)
es5="$tmp/package/es5"

rm -rf "$dest"
mkdir -p "$dest/output/chtml/fonts/woff-v2" "$dest/input/tex/extensions"
cp "$es5/tex-mml-chtml.js" "$dest/"
cp "$es5"/output/chtml/fonts/woff-v2/*.woff "$dest/output/chtml/fonts/woff-v2/"
cp "$es5"/input/tex/extensions/*.js "$dest/input/tex/extensions/"
rm -f "$dest/input/tex/extensions/all-packages.js"   # a bundle of all of them, never autoloaded
cp "$tmp/package/LICENSE" "$dest/LICENSE"
printf 'MathJax %s (npm package "mathjax", es5 build), vendored by book/fetch_mathjax.sh\n' "$version" > "$dest/VERSION"
du -sh "$dest"
