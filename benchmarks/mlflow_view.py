"""Does the URL rayssl prints open a run's metrics in MLflow's model-training view?

MLflow 3.17 opens every experiment in its GenAI view (traces, token usage) in a fresh
browser, whatever the experiment's kind tag; rayssl's commands print the run's address
with `?workflowType=machine_learning` (`rayssl.tracking_uri.run_view`). This check starts
`mlflow ui` on a new sqlite store holding one run with distinctive metrics, renders the
printed URL in headless Chromium (a fresh profile: no remembered view), and reports
which view opened (the navigation labels only that view shows) and whether the metrics'
names appear on the page; the same URL without the query parameter is rendered too, for
comparison. A screenshot and the DOM of each are written to --out.

    python benchmarks/mlflow_view.py [--out DIR] [--browser chromium] [--budget-ms 20000]

Exit 0: the page opens in the model-training view and shows the metrics; 1: it does
not; 2: no Chromium (it is not installed by this script) or `mlflow ui` did not start.
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.tracking_uri import DEFAULT_UI_ADDRESS, run_view  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
METRICS = {"rayssl_view_check_loss": [0.9, 0.5, 0.3], "rayssl_view_check_acc": [0.2, 0.6, 0.8]}
#: Navigation labels only one of MLflow 3.17's two views shows (its sidebar and the run
#: page's breadcrumb), as rendered text between tags: a run's page shows its metrics in
#: both views, so which view opened is told by these.
VIEW_MARKERS = {
    "model_training": (">Runs<", ">Model registry<"),
    "genai": (">Evaluation runs<", ">Judges<"),
}


def which_view(dom: str) -> str:
    """The view the page shows: model_training, genai, or unknown (both or neither)."""
    shown = [v for v, marks in VIEW_MARKERS.items() if all(m in dom for m in marks)]
    return shown[0] if len(shown) == 1 else "unknown"


def find_browser(name: str | None) -> str | None:
    for candidate in [name] if name else BROWSERS:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_store(work: Path) -> tuple[str, str, str]:
    """A sqlite store with one finished run and its metrics: (uri, experiment, run)."""
    import mlflow  # lazy: only after the browser is known to exist

    uri = f"sqlite:///{work / 'mlruns.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("rayssl-view-check", artifact_location=str(work / "art"))
    client.set_experiment_tag(exp, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(exp, run_name="rayssl-view-check")
    for name, values in METRICS.items():
        for step, value in enumerate(values):
            client.log_metric(run.info.run_id, name, value, step=step)
    client.set_terminated(run.info.run_id)
    return uri, exp, run.info.run_id


def wait_for_server(base: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Until the server answers /health, it exits, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def render(browser: str, url: str, shot: Path, budget_ms: int, profile: Path) -> str:
    """The page's DOM after `budget_ms` of virtual time (and a screenshot)."""
    common = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        f"--virtual-time-budget={budget_ms}",
    ]
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    out = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="", help="folder for the screenshots (default: a temp one)")
    ap.add_argument("--browser", default=None, help=f"browser binary (default: {BROWSERS})")
    ap.add_argument("--budget-ms", type=int, default=20000, help="virtual time to render")
    args = ap.parse_args()
    browser = find_browser(args.browser)
    if browser is None:
        print(
            f"mlflow_view: no Chromium found ({args.browser or ', '.join(BROWSERS)}); install "
            "one to run this check (this script installs nothing)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = Path(args.out) if args.out else work / "out"
        out.mkdir(parents=True, exist_ok=True)
        uri, exp, run_id = make_store(work)
        view = run_view(uri, exp, run_id)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        url = view.url.replace(DEFAULT_UI_ADDRESS, base, 1)
        print(view.line())
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
            + ["--host", "127.0.0.1", "--port", str(port)],
            stdout=(work / "mlflow-ui.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers in one group, stopped together below
        )
        try:
            if not wait_for_server(base, server, timeout_s=120):
                print(f"mlflow_view: `mlflow ui` did not start on {base}", file=sys.stderr)
                print((work / "mlflow-ui.log").read_text()[-2000:], file=sys.stderr)
                return 2
            found = {}
            for label, page in (("training_view", url), ("default_view", url.split("?")[0])):
                dom = render(
                    browser, page, out / f"{label}.png", args.budget_ms, work / f"p-{label}"
                )
                (out / f"{label}.html").write_text(dom)
                found[label] = {
                    "url": page,
                    "view": which_view(dom),
                    "metrics_shown": sorted(m for m in METRICS if m in dom),
                    "dom_chars": len(dom),
                    "screenshot": str(out / f"{label}.png"),
                }
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the group this script started
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        shown = found["training_view"]
        ok = shown["view"] == "model_training" and set(shown["metrics_shown"]) == set(METRICS)
        print(json.dumps({"browser": browser, "metrics_in_training_view": ok, **found}, indent=1))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
