"""Score every video's curriculum difficulty into a new manifest (Ray Data job; rayssl.tools.score).

python jobs/score.py data/ucf101.parquet --out data/ucf101_scored.parquet --clips uniform:1
ray job submit --working-dir . -- python jobs/score.py s3://b/m.parquet --out s3://b/scored.parquet
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.cli import add_score_arguments, score_from_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_score_arguments(parser)
    try:
        summary = score_from_args(parser.parse_args())
    except ValueError as e:  # bad arguments or input (ManifestError included)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
