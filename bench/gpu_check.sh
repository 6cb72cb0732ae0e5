#!/usr/bin/env bash
# CUDA check of the worker on a GPU machine without internet: build
# llama-cpp-python for CUDA (sm_90) from a slimmed sdist in .sdist/, install the
# wheels in .whl/, then run hive + worker + keeper for real with --backend auto,
# cuda, metal (refused) and a missing --device, and `rbee nodes check`.
# Prepare .sdist/llama-slim.tar.gz and .whl/ as described in bench/README.md.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN
export PYTHONPATH=/tmp/site:$REPO
nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits
if [ -d /tmp/site/llama_cpp/lib ] && ls /tmp/site/llama_cpp/lib | grep -q cuda; then echo "reusing the CUDA build"; SKIP=1; else SKIP=0; fi
if [ "$SKIP" = 0 ]; then mkdir -p /tmp/b && tar xzf .sdist/llama-slim.tar.gz -C /tmp/b
cd /tmp/b/llama_cpp_python-0.3.36
start=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "BUILD_SECONDS $(( $(date +%s) - start ))"; fi
cd $REPO
ls /tmp/site/llama_cpp/lib | tr '\n' ' '; echo
python3 -c "from rbee_fabric.llamabuild import llama_build_backend as b; print('LLAMA_BUILD', b())"
export RBEE_DATA_DIR=/tmp/rb/data RBEE_CONFIG_DIR=/tmp/rb/cfg RBEE_INVENTORY=/tmp/rb/hosts.toml
mkdir -p /tmp/rb && printf '[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = 9250\n' > /tmp/rb/hosts.toml
python3 -c "
from pathlib import Path; from tests.support.tiny_gguf import write_tiny_gguf
write_tiny_gguf(Path('/tmp/rb/tiny.gguf'))"
python3 -c "
from pathlib import Path; from rbee_fabric.resources import gather; from rbee_fabric.llamabuild import llama_build_backend
print('RESOURCES', gather(Path('/tmp'), llama_build_backend()).model_dump_json())"
R="python3 -m rbee_fabric.cli"
$R infer --model file:/tmp/rb/tiny.gguf --prompt hello --max-tokens 16 --json 2>&1 | tail -3
$R workers list --json; echo
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
$R infer --model file:/tmp/rb/tiny.gguf --prompt hello --max-tokens 16 --backend cuda --device 0 --json 2>&1 | tail -2
$R infer --model file:/tmp/rb/tiny.gguf --prompt hello --backend metal 2>&1 | tail -2; echo "metal exit=$?"
$R infer --model file:/tmp/rb/tiny.gguf --prompt hello --backend cuda --device 3 2>&1 | tail -2
$R nodes check localhost --model file:/tmp/rb/tiny.gguf 2>&1 | grep -vE "^[┏┡└]"
grep -iE "offload|CUDA|error" /tmp/rb/data/logs/worker-*.log | head -10
$R hive stop localhost
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; echo "apps after stop: done"
