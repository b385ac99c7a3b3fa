#!/bin/bash
# The script that produced this folder on an NVIDIA H200 (2026-11-26). It ran from the checkout's root as
# .gpu/run.sh, with run.sh, diag.py and summary.py copied to the ignored folder .gpu/ and the pinned
# transformers wheel (5.24.0, plus regex) in .whl/ (installed with --target when present).
# One GPU session: the gpu-marked tests, then the speed benchmark on the four real shapes (bf16, full depth,
# random weights), then the independent probe. Logs and reports go to $R, tarred into $OUT after each step.
# DEV=cpu runs the same steps on tiny models (a dry run of this script on a CPU machine).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DEV=${DEV:-cuda}; OUT=${OUT:-/tmp/gpu-out}; R=/tmp/r; mkdir -p $R $OUT
if [ -d .whl ] && [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
pack() { tar czf $OUT/results.tgz -C $R . ; }
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 t=$2; shift 2; local s=$(date +%s)
  echo "== $name: $*"
  timeout -k 5 $t "$@" > $R/$name.log 2>&1; local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s"
  tail -n ${TAIL:-6} $R/$name.log; pack
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>&1
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, transformers.__file__)
import importlib.util as u; print('torchvision', u.find_spec('torchvision') is not None)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee $R/env.txt
if [ "$DEV" = cuda ]; then
  M15=llava-1.5-7b; MNX=llava-next-7b; MQ25=qwen2.5-vl-7b; MQ3=qwen3-vl-8b; DT=bfloat16; REPS=${REPS:-10}; WU=${WU:-3}; EXTRA=""
else
  M15=tiny-llava; MNX=tiny-llava-next; MQ25=tiny-qwen2.5-vl; MQ3=tiny-qwen3-vl; DT=float32; REPS=${REPS:-2}; WU=${WU:-1}; EXTRA="--threads 1"
fi
SPEED="python3 -m occam.bench speed --device $DEV --dtype $DT --reps $REPS --warmup $WU --max-new-tokens 1 $EXTRA"
TAIL=14 step gputests 120 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_engine.py
TAIL=3 step speed_llava15 100 $SPEED --model $M15 --retention 0.25 0.11 0.05 --out $R/speed_llava-1.5-7b_$DEV.md
TAIL=3 step speed_next 140 $SPEED --model $MNX --retention 0.25 0.11 0.05 0.014 --out $R/speed_llava-next-7b_$DEV.md
TAIL=3 step speed_qwen25 90 $SPEED --model $MQ25 --retention 0.25 0.11 0.05 --out $R/speed_qwen2.5-vl-7b_$DEV.md
TAIL=3 step speed_qwen3 90 $SPEED --model $MQ3 --retention 0.25 0.11 0.05 --out $R/speed_qwen3-vl-8b_$DEV.md
TAIL=40 step diag 60 python3 .gpu/diag.py $DEV $M15
TAIL=3 step speed_qwen25_large 90 $SPEED --model $MQ25 --image-size 1280x960 --retention 0.25 0.11 0.05 --out $R/speed_qwen2.5-vl-7b_1280x960_$DEV.md
TAIL=3 step speed_qwen25_video 80 $SPEED --model $MQ25 --frames 16 --methods none occam topk fastv --retention 0.25 0.11 --reps 4 --warmup 1 --out $R/speed_qwen2.5-vl-7b_video16_$DEV.md
python3 .gpu/summary.py $R 2>&1 | tee $R/summary.txt
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv 2>&1 | tee -a $R/env.txt; date -u | tee -a $R/env.txt
pack
