#!/usr/bin/env bash
# Every check archbench needs a GPU for, in one command that fits a lent-GPU session (about 8 of
# its 15 minutes). Run on the device machine from the repository root:
#     run(command="bash benchmarks/gpu/checks.sh", carry=[".whl"], timeout_s=560)
# Results land in $OUT (at most 8 files come back): summary.txt (environment, each stage's exit
# code and wall time), pytest.txt, stages.log (every other stage's output) and the rows of the
# suite and recipe runs (long-context.jsonl, mqar.jsonl, recipes.jsonl).
# A stage that fails or times out does not stop the next. See docs/gpu-session.md.
set -u
OUT=${OUT:-/tmp/archbench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
AB="python3 -m archbench.cli"
RUNS=$(mktemp -d)  # run directories; only their rows come back
S="$OUT/summary.txt"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c \
  "import torch, importlib.util as u; print('torch', torch.__version__, 'cuda', torch.version.cuda, {m: bool(u.find_spec(m)) for m in ('triton', 'fla', 'mamba_ssm', 'flash_attn', 'transformers')})"; } > "$S" 2>&1

stage() {  # stage NAME SECONDS CMD...: run CMD with a time limit, log it, record exit and time
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS log="$OUT/stages.log"
  [ "$name" = pytest ] && log="$OUT/pytest.txt"
  echo "=== $name" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" >> "$S"
}
rows() {  # rows NAME DIR: keep a run's rows.jsonl as $OUT/NAME.jsonl
  if [ -f "$2/rows.jsonl" ]; then cp "$2/rows.jsonl" "$OUT/$1.jsonl"; fi
}

# 1. fused kernels vs references, timer vs triton.testing.do_bench, CUDA-graph replay, NVML energy
stage pytest 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_ops.py tests/test_gla.py \
  tests/test_delta_rule.py tests/test_dplr.py tests/test_ssm.py tests/test_sparse.py tests/test_timer_fidelity.py \
  tests/test_bench.py tests/test_energy.py tests/test_measure.py
# 2. op-level references and SDPA on the GPU (the CPU table is results/baselines/cpu-2core-xeon/op_speed.txt)
stage op_speed 40 python3 benchmarks/op_speed.py --device cuda --lengths 4096 16384
# 3. a slice of the long-context suite: every family, three modes, fused backends, NVML energy on
stage long-context 120 $AB run suites/long-context.yaml --out "$RUNS/lc" --no-report --allow-failures \
  --set 'sweep.batch=[1]' --set 'sweep.seq_len=[4096,16384]' --set defaults.measure.budget_s=0.5
rows long-context "$RUNS/lc"
# 4. MQAR on the GPU: the CPU slice's settings, bf16, two families, to compare with the CPU accuracies
stage mqar 90 $AB run suites/mqar-gpu.yaml --out "$RUNS/mq" --no-report --allow-failures \
  --set 'sweep.arch=[softmax_attention,mamba2]' --set 'sweep.d_model=[64]' --set 'sweep.seq_len=[64]' \
  --set 'sweep.num_kv_pairs=[4]' --set 'defaults.train.lr=[2.2e-3]' --set defaults.train.steps=2000
rows mqar "$RUNS/mq"
# 5. a recipe on the GPU: the default teacher pre-trained there, RADLADS steps 1 + 2, teacher vs student rows
stage recipes 120 $AB convert radlads --set device=cuda --out "$RUNS/rc"
rows recipes "$RUNS/rc"
cat "$S"
