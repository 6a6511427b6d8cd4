"""torch.hub entries: one per registered rayssl backbone (`rayssl.models.BACKBONES`).

    backbone = torch.hub.load("path/to/rayssl", "r21d", weights="exported/", source="local")

`weights` is a folder written by `rayssl export` (safetensors + settings JSON; loading it
runs no code, and every tensor's name and shape is checked); without it the backbone is
randomly initialised at `width`. The backbone comes back in eval mode. The entries are
generated from the registry, so a backbone registered in `rayssl.models` has one.
"""

from __future__ import annotations

dependencies = ["torch", "safetensors"]


def _entry(name: str):
    def load(weights: str | None = None, width: float = 1.0, device: str = "cpu"):
        from rayssl.export import ExportError, load_exported, read_settings
        from rayssl.models import build_backbone

        if weights is None:
            return build_backbone(name, width=width).eval().to(device)
        settings = read_settings(weights)
        if settings["backbone"] != name:
            raise ExportError(
                f"{weights}: holds a {settings['backbone']!r} backbone, not {name!r}; "
                f"load it with the entry {settings['backbone']!r}"
            )
        return load_exported(weights, device=device)

    load.__name__ = load.__qualname__ = name
    load.__doc__ = (
        f"rayssl backbone {name!r}: weights=<folder written by rayssl export> (None: random "
        "init at `width`); returns the backbone in eval mode."
    )
    return load


def _register() -> None:
    from rayssl.models import BACKBONES

    for name in BACKBONES:
        globals()[name] = _entry(name)


_register()
