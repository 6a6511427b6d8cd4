"""Self-supervised pre-training job.

python jobs/pretrain.py --config configs/debug.yaml [key=value ...]
ray job submit --working-dir . -- python jobs/pretrain.py --config configs/debug.yaml
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.config import ConfigError, load_config  # noqa: E402
from rayssl.launch import pretrain  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    try:
        result = pretrain(load_config(args.config, args.overrides))
    except ConfigError as e:  # bad keys or values, or what they name (rayssl.preflight)
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
