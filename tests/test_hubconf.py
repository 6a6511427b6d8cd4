"""hubconf.py: torch.hub.load(<repo>, <backbone>, weights=<exported dir>, source="local")."""

from __future__ import annotations

import pytest
import torch

from rayssl.export import ExportError, export_backbone
from rayssl.models import BACKBONES, build_backbone
from tests.conftest import ROOT


def _hub(name: str, **kwargs):
    return torch.hub.load(str(ROOT), name, source="local", trust_repo=True, **kwargs)


def test_every_registered_backbone_has_an_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    assert spec is not None and spec.loader is not None
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == set(BACKBONES)
    assert set(hubconf.dependencies) == {"torch", "safetensors"}


@pytest.mark.parametrize("name", ["r21d", "r2plus1d_18"])
def test_hub_load_gives_the_exported_backbone(name, tmp_path):
    torch.manual_seed(3)
    net = build_backbone(name, width=0.125).eval()
    export_backbone(net, name, 0.125, tmp_path / "exp")
    loaded = _hub(name, weights=str(tmp_path / "exp"))
    assert type(loaded) is type(net) and not loaded.training
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-6, rtol=0)
    # the wrong entry for these weights names the right one
    other = "c3d" if name != "c3d" else "r3d"
    with pytest.raises(ExportError, match=f"holds a '{name}' backbone, not '{other}'"):
        _hub(other, weights=str(tmp_path / "exp"))
    # no weights: the registered backbone at its random initialisation
    fresh = _hub(name, width=0.125)
    assert type(fresh) is type(net) and not fresh.training
    with pytest.raises(ExportError, match="not an exported backbone"):
        _hub(name, weights=str(tmp_path))
