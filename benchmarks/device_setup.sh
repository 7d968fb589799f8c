#!/usr/bin/env bash
# Device-machine setup for the GPU suite (source it): the carried wheels (pydantic, mooncake) into
# /tmp/site, and the shared libraries Mooncake needs that the image lacks, from the carried Debian
# packages in .whl/debs (only the missing ones are linked into /tmp/miss, two passes for their deps).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD/trainer:$PWD/operator
chmod +x /tmp/site/mooncake/mooncake_master /tmp/site/mooncake/mooncake_client 2>/dev/null
mkdir -p /tmp/root /tmp/miss
for f in .whl/debs/*.deb; do dpkg -x "$f" /tmp/root; done
export LD_LIBRARY_PATH=/tmp/miss:${LD_LIBRARY_PATH:-}
for pass in 1 2 3; do
  for l in $(ldd /tmp/site/mooncake/store.so /tmp/site/mooncake/mooncake_master /tmp/site/mooncake/engine.so 2>/dev/null \
             | awk '/not found/{print $1}' | sort -u); do
    p=$(find /tmp/root -name "$l*" | head -1)
    [ -n "$p" ] && ln -sf "$p" "/tmp/miss/$l"
    echo "pass $pass: missing $l -> ${p:-NONE}"
  done
done
python3 -c 'import mooncake.store, pydantic; print("mooncake + pydantic import ok")' || echo "mooncake import FAILED"
