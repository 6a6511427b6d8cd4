"""Transcode a dataset to training-ready H.264 MP4 (Ray Data job; see rayssl.prepare).

python jobs/prepare.py data/ucf101.parquet --out data/ucf101_h264 --short-side 128 --gop 16
ray job submit --working-dir . -- python jobs/prepare.py s3://b/m.parquet --out s3://b/prep
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.prepare import run_prepare  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="manifest (.parquet, local or s3://) or a class-folder root")
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--short-side", type=int, default=128, help="output short side (px)")
    parser.add_argument("--gop", type=int, default=16, help="a keyframe every N frames")
    parser.add_argument("--crf", type=int, default=23, help="x264 CRF (lower = better)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset")
    parser.add_argument("--endpoint-url", default="", help="S3 endpoint (else AWS_ENDPOINT_URL_S3)")
    parser.add_argument("--overwrite", action="store_true", help="redo valid existing outputs")
    args = parser.parse_args()
    summary = run_prepare(
        args.src,
        args.out,
        short_side=args.short_side,
        gop=args.gop,
        crf=args.crf,
        endpoint_url=args.endpoint_url or None,
        preset=args.preset,
        overwrite=args.overwrite,
    )
    print("RESULT " + json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
