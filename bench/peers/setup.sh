#!/usr/bin/env bash
# Creates the peers' virtualenvs, outside the repository and never in the project's venv:
#   $CNNSERVE_PEERS_DIR/mlserver  Seldon MLServer 1.7.1 + ONNX Runtime (requirements-mlserver.txt)
#   $CNNSERVE_PEERS_DIR/kserve    KServe 0.21.0 ModelServer + ONNX Runtime (requirements-kserve.txt)
# CNNSERVE_PEERS_DIR defaults to ~/.cache/cnnserve-peers. A venv whose requirements file has not
# changed since it was built is kept; `pip freeze` of each lands in its freeze.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
peers=${CNNSERVE_PEERS_DIR:-$HOME/.cache/cnnserve-peers}
python=${PYTHON:-python3}
mkdir -p "$peers"
peers=$(cd "$peers" && pwd)
case "$peers/" in
  "$repo"/*) echo "CNNSERVE_PEERS_DIR must be outside the repository ($repo), received $peers" >&2; exit 2 ;;
esac
for peer in mlserver kserve; do
  venv=$peers/$peer
  requirements=$here/requirements-$peer.txt
  if [ -f "$venv/.installed" ] && cmp -s "$requirements" "$venv/.installed"; then
    echo "$peer: $venv is up to date"
    continue
  fi
  echo "$peer: creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$requirements"
  "$venv/bin/pip" freeze > "$venv/freeze.txt"
  cp "$requirements" "$venv/.installed"
done
