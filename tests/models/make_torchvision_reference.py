"""Write tests/models/torchvision_video_reference.json from torchvision itself.

    python tests/models/make_torchvision_reference.py   (where torchvision imports)

For each of torchvision's r3d_18, mc3_18, r2plus1d_18 and s3d: every state-dict key with
its shape and dtype, and the globally pooled last-stage features of a fixed clip with the
deterministic weights of `reference_state`. tests/models/test_torchvision_backbones.py
checks rayssl's torchvision-layout backbones against it without torchvision (whose CPU
wheel needs a CUDA build of torch). Recorded with torchvision 0.28.0 (torch 2.13).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.models.test_torchvision_backbones import (  # noqa: E402
    REFERENCE,
    reference_clip,
    reference_state,
)


def main() -> None:
    import torchvision
    from torchvision.models import video as tv

    models = {
        "r3d_18": lambda: tv.VideoResNet(
            tv.BasicBlock, [tv.Conv3DSimple] * 4, [2] * 4, tv.BasicStem
        ),
        "mc3_18": lambda: tv.VideoResNet(
            tv.BasicBlock, [tv.Conv3DSimple] + [tv.Conv3DNoTemporal] * 3, [2] * 4, tv.BasicStem
        ),
        "r2plus1d_18": lambda: tv.VideoResNet(
            tv.BasicBlock, [tv.Conv2Plus1D] * 4, [2] * 4, tv.R2Plus1dStem
        ),
        "s3d": lambda: tv.S3D(),
    }
    out = {"torchvision": getattr(torchvision, "__version__", "?"), "models": {}}
    for name, build in models.items():
        model = build().eval()
        own = model.state_dict()
        state = reference_state({k: (list(v.shape), str(v.dtype)) for k, v in own.items()})
        model.load_state_dict(state)
        with torch.no_grad():
            x = reference_clip()
            if name == "s3d":
                maps = model.features(x)
            else:
                maps = x
                for part in (model.stem, model.layer1, model.layer2, model.layer3, model.layer4):
                    maps = part(maps)
            pooled = maps.mean(dim=(2, 3, 4))[0]
        out["models"][name] = {
            "keys": {k: [list(v.shape), str(v.dtype)] for k, v in own.items()},
            "pool5": [round(float(v), 7) for v in pooled],
        }
    REFERENCE.write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
