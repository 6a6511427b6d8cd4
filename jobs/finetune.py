"""Fine-tuning for action recognition, then the test protocol (thesis: 10 clips per video).

python jobs/finetune.py --config configs/finetune_ucf101.yaml --checkpoint runs:/<id> [k=v ...]
ray job submit --working-dir . -- python jobs/finetune.py --config ... --checkpoint s3://...
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.cli import add_finetune_arguments, finetune_from_args, parse_args  # noqa: E402
from rayssl.config import ConfigError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_finetune_arguments(parser)
    args = parse_args(parser, None)
    try:
        result = finetune_from_args(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
