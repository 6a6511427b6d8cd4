"""The repository stands alone: a user's clone has no sibling shared folder and none of
this machine's paths, so no tracked file may name them."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"git ls-files failed in {ROOT}: {out.stderr}")
    return [p for p in out.stdout.split("\0") if p]


def test_no_tracked_file_points_outside_the_repository():
    # Built from pieces so this file does not match itself.
    patterns = [".." + "/shared", "/work" + "/shared"]
    if len(ROOT.parent.parts) > 2:  # the checkout's parent folder, e.g. /work or /home/ci/src
        patterns.append(str(ROOT.parent) + "/")
    offenders = []
    for rel in _tracked():
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for n, line in enumerate(text.splitlines(), 1):
            if any(p in line for p in patterns):
                offenders.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not offenders, "tracked files name paths outside the repository:\n" + "\n".join(
        offenders
    )


def test_benchmark_reference_figures_are_in_the_repository():
    import json

    anchor = json.loads((ROOT / "benchmarks" / "h100-anchor.json").read_text())
    assert anchor["device"].startswith("NVIDIA H100")
    assert {row["model"] for row in anchor["train"]} == {"c3d", "r3d", "r21d"}
