#!/usr/bin/env bash
# The peers' own venv for benchmarks/bench_peers.py (`make bench-peers` calls this, then the benchmark).
#
# Why a separate venv: the peers pin what they like (TRL pulls datasets/pyarrow, TextBrewer asks for old
# releases of its dependencies), and the project's .venv must not change because a benchmark ran.
# Idempotent: a stamp records the exact install; a rerun with the same pins does nothing.
#   torch==2.13.0          exact pin: it takes the local CPU wheel (a looser pin downloads a multi-GB CUDA build)
#   trl==1.16.0            GKDTrainer (trl.experimental.gkd), the release the issue's figures were taken with
#   textbrewer==0.2.1      GeneralDistiller; installed with --no-deps (its declared dependencies are old
#                          releases), plus what it imports: transformers, tensorboard, tqdm
#   the project itself     editable, --no-deps (it imports nothing the lines below do not install)
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv-bench}
TORCH="torch==2.13.0"
TRL="trl==1.16.0"
TEXTBREWER="textbrewer==0.2.1"
# the project's runtime imports for the modules the benchmark uses, and what TRL/TextBrewer need
DEPS=("transformers>=5.0,<6" "accelerate>=1.10.1" "tokenizers>=0.21" "safetensors>=0.4" "gguf>=0.10"
      "datasets>=4.7" "numpy>=1.26" "pandas>=2.0" "matplotlib>=3.8" "pyyaml>=6.0" "tqdm>=4.66"
      "tensorboard" "psutil")
SPEC="$TORCH $TRL $TEXTBREWER ${DEPS[*]}"
STAMP="$VENV/.bench-installed"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SPEC" ] && "$VENV/bin/python" -c "import trl, textbrewer, glmd_lib" 2>/dev/null; then
    echo "bench venv $VENV: up to date"
    exit 0
fi
echo "bench venv $VENV: installing $TORCH, $TRL, $TEXTBREWER (--no-deps) and the project (a few minutes the first time)"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH"
"$VENV/bin/python" -m pip install --quiet "$TORCH" "$TRL" "${DEPS[@]}"
"$VENV/bin/python" -m pip install --quiet --no-deps "$TEXTBREWER"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -c "import torch, trl, textbrewer, transformers, glmd_lib; print('bench venv: torch', torch.__version__, '| trl', trl.__version__, '| textbrewer', textbrewer.__version__, '| transformers', transformers.__version__)"
echo "$SPEC" > "$STAMP"
