#!/usr/bin/env bash
# Create (idempotently) the datatrove anchor venv at benchmarks/.venv-datatrove.
# It is separate from the project venv on purpose: datatrove and spaCy must never enter /work/main/.venv.
# Re-running is a no-op unless requirements-anchor.txt changed (or --force is given).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-datatrove"
req="$here/requirements-anchor.txt"
stamp="$venv/.installed"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then rm -rf "$venv"; fi
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c 'import datatrove, spacy, xxhash, pyarrow' 2>/dev/null; then
  echo "anchor venv up to date: $venv ($("$venv/bin/python" -c 'import importlib.metadata as m; print("datatrove", m.version("datatrove"))'))"
  exit 0
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "datatrove needs Python 3.10+"'
[[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
"$venv/bin/python" -c 'import datatrove, spacy; spacy.blank("en")("ok")'
echo "$want" > "$stamp"
echo "anchor venv ready: $venv"
