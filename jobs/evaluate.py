"""Run an evaluation suite on a checkpoint: retrieval, linear probe, action similarity,
attention maps, fine-tuning; writes DIR/results.json and logs to MLflow.

python jobs/evaluate.py --checkpoint runs:/<id> --suite configs/eval_ucf101.yaml --out DIR
ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint s3://... --suite ...
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.cli import add_evaluate_arguments, evaluate_from_args, parse_args  # noqa: E402
from rayssl.config import ConfigError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_evaluate_arguments(parser)
    args = parse_args(parser, None)
    try:
        result = evaluate_from_args(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
