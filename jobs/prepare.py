"""Transcode a dataset to training-ready H.264 MP4 (Ray Data job; see rayssl.tools.prepare).

python jobs/prepare.py data/ucf101.parquet --out data/ucf101_h264 --short-side 128 --gop 16
ray job submit --working-dir . -- python jobs/prepare.py s3://b/m.parquet --out s3://b/prep
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.cli import add_prepare_arguments, prepare_from_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser)
    try:
        summary = prepare_from_args(parser.parse_args())
    except ValueError as e:  # bad settings, a refused run (PrepareError), ManifestError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
