"""Pack what the lent GPU machine lacks (Ray, PyAV, MLflow, ...: benchmarks/gpu_wheels.txt)
into one archive that travels with the repository to it; run here, where pip reaches the
package index. From the repository root:

    python benchmarks/gpu_wheels.py            # -> .whl/site.tar.xz (.whl/ is git-ignored)

then name `.whl` in the device tool's `carry`; benchmarks/gpu_run.sh unpacks it into a
folder on PYTHONPATH when `import ray` fails there.

Why an archive and not the wheels: the machine runs Python 3.12 (no virtual environment
made here runs there, and this machine's is 3.11), and a call carries 64 MiB at most,
repository included. The wheels are ~145 MB (Ray 79, PyAV 36, botocore 17). So:

* the cp312 manylinux wheels are downloaded at this environment's versions (the project's
  pins: one version of each), without their dependencies (the list is complete);
* unpacked into one site folder as pip would (`pip install --target`), minus what no part
  of the check imports: Ray's Java jars, RLlib, Serve, LLM and the dashboard's source maps,
  botocore's service models other than S3 and STS;
* Ray's three binaries (gcs_server, raylet, _raylet.so) lose their symbol tables
  (`strip --strip-unneeded`; other libraries are left as they are: auditwheel's patched
  ones may not survive strip);
* tarred and xz-compressed (56.4 MiB on 2026-12-07): the script fails when the archive
  is over --limit-mib.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
#: Parts of the Ray wheel nothing here imports (the Java worker alone is 32 MB).
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/")
#: botocore service models kept (rayssl talks to S3; STS for assumed roles).
BOTO_SERVICES = {"s3", "sts"}
RAY_BINARIES = (
    "ray/_raylet.so",
    "ray/core/src/ray/gcs/gcs_server",
    "ray/core/src/ray/raylet/raylet",
)


def norm(name: str) -> str:
    """A distribution's name as wheel file names spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower(), version


def read_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def pins(names: list[str]) -> list[str]:
    """NAME==VERSION of each, at this environment's version."""
    out, missing = [], []
    for name in names:
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"not installed in this environment: {', '.join(missing)}")
    return out


def download(reqs: list[str], cache: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["-d", str(cache), *reqs]
    subprocess.run(cmd, check=True)


def keep(name: str) -> bool:
    """Whether a wheel member goes into the site folder."""
    if name.startswith(RAY_DROP) or name.endswith(".js.map"):
        return False
    top = name.split("/", 1)[0]
    if top.endswith(".data"):  # scripts and headers: the CLIs run as `python -m`
        return False
    parts = name.split("/")
    return not (
        name.startswith("botocore/data/") and len(parts) > 3 and parts[2] not in BOTO_SERVICES
    )


def unpack(wheels: list[Path], site: Path) -> None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.is_dir() or not keep(info.filename):
                    continue
                path = site / info.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)


def strip_ray(site: Path) -> None:
    strip = shutil.which("strip")
    if strip is None:
        print("gpu_wheels: no `strip` here: Ray's binaries keep their symbols")
        return
    for rel in RAY_BINARIES:
        subprocess.run([strip, "--strip-unneeded", str(site / rel)], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=".whl", help="folder of site.tar.xz (default .whl)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "rayssl-gpu-wheels"))
    ap.add_argument("--list", default=str(HERE / "gpu_wheels.txt"))
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--limit-mib", type=float, default=58.0, help="archive size allowed")
    ap.add_argument("--xz-preset", type=int, default=9)
    args = ap.parse_args(argv)

    reqs = pins(read_list(Path(args.list)))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    download(reqs, cache, args.python_version)
    wheels, missing = [], []
    for req in reqs:
        name, version = req.split("==")
        found = [w for w in cache.glob("*.whl") if wheel_key(w) == (norm(name), version)]
        if found:
            wheels.append(sorted(found)[-1])
        else:
            missing.append(req)
    if missing:
        raise SystemExit(f"no wheel downloaded for: {', '.join(missing)}")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        unpack(wheels, site)
        strip_ray(site)
        archive = dest / "site.tar.xz"
        part = archive.with_suffix(".part")
        with tarfile.open(part, "w:xz", preset=args.xz_preset) as tar:
            tar.add(site, arcname=".")
        part.replace(archive)
    listing = "\n".join(reqs) + "\n"
    (dest / "site.txt").write_text(listing)
    mib = archive.stat().st_size / 2**20
    print(f"gpu_wheels: {archive} {mib:.1f} MiB ({len(reqs)} distributions)")
    if mib > args.limit_mib:
        print(
            f"gpu_wheels: over --limit-mib {args.limit_mib:g}: the call would not carry it "
            "with the repository (64 MiB in all)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
