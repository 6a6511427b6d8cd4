"""A Ray Tune study: pre-train and evaluate every combination of the sweep's axes
(rayssl.tune.sweep), then fit and log the scaling law. Submitting it again resumes it.

python jobs/sweep.py --config configs/sweep_debug.yaml [key=value ...]
ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep_debug.yaml
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayssl

from rayssl.config import ConfigError  # noqa: E402
from rayssl.tune.sweep import load_sweep, run_sweep  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value sweep overrides")
    args = parser.parse_args()
    try:
        cfg = load_sweep(args.config, args.overrides)
        result = run_sweep(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(result.pop("table"))
    print("RESULT " + json.dumps(result, default=str))
    return 0 if result["trials_done"] == result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
