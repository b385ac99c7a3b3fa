#!/bin/bash
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
mkdir -p $OUT
timeout -k 5 45 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_engine.py 2>&1 | tail -3 | tee $OUT/gputests_final.log
timeout -k 5 140 python3 .gpu/fuse.py cuda 2>&1 | grep -v Warning | tail -8 | tee $OUT/fuse.log
