"""The cluster files a newcomer follows are valid and agree with the repository.

Every YAML file in cluster/ and every YAML block of cluster/README.md parses;
cluster/aws.yaml (and the spot variant README shows) validates against the JSON schema
Ray ships for cluster launcher configs; the KubeRay manifests have what KubeRay needs
and agree with each other (one image, the RayJob's cluster, the MLflow Service); every
`jobs/pretrain.py --config ...` command in cluster/ loads with its overrides, every
`rayssl ... manifest` command parses; every repository path named in cluster/ exists.
No cloud machine is started.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
YAML_FILES = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
TEXT_FILES = sorted([*YAML_FILES, *CLUSTER.rglob("*.md")])


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{_rel(path)}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{_rel(path)}: a document is not a mapping"
    return docs


def _readme_yaml_blocks() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    return [yaml.safe_load(b) for b in blocks]


def _by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in YAML_FILES for d in _documents(p) if d.get("kind") == kind]


def _merge(base: dict, extra: dict) -> dict:
    """`extra` laid over `base`, mappings merged key by key (lists replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_the_cluster_folder_has_the_files_the_readme_promises():
    names = {_rel(p) for p in YAML_FILES}
    assert {
        "cluster/aws.yaml",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob.yaml",
        "cluster/kuberay/mlflow.yaml",
    } <= names
    assert README.exists()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_cluster_yaml_parses(path):
    _documents(path)


def test_every_yaml_block_of_the_readme_parses():
    blocks = _readme_yaml_blocks()
    assert len(blocks) >= 2 and all(isinstance(b, dict) for b in blocks)


# --- cluster/aws.yaml: Ray's own schema ---------------------------------------------


def _ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _schema_errors(config: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_ray_schema())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)
    ]


def _check_launcher_config(config: dict) -> None:
    """What the schema cannot say: node types that exist and fit the global cap."""
    assert not _schema_errors(config), _schema_errors(config)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers, "no worker node type"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    for name, t in types.items():  # S3 access: no node without an instance profile
        assert "Arn" in t["node_config"].get("IamInstanceProfile", {}), name


def test_aws_config_validates_against_rays_cluster_schema():
    (config,) = _documents(CLUSTER / "aws.yaml")
    assert config["provider"]["type"] == "aws"
    _check_launcher_config(config)
    # The validator does reject a broken config (so a pass above means something).
    broken = copy.deepcopy(config)
    broken["max_workers"] = "twelve"
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    assert len(_schema_errors(broken)) == 2
    # file_mounts and rsync_filter name files of the repository (`ray up` from its root).
    for source in config["file_mounts"].values():
        if source.startswith("~"):  # the secrets folder: on your machine, never in the repo
            continue
        assert (ROOT / source).exists(), source
    for name in config["rsync_filter"]:
        assert (ROOT / name).exists(), name


def test_aws_spot_variant_of_the_readme_validates_too():
    (config,) = _documents(CLUSTER / "aws.yaml")
    spot = [b for b in _readme_yaml_blocks() if "available_node_types" in b]
    assert len(spot) == 1
    merged = _merge(config, spot[0])
    _check_launcher_config(merged)
    markets = [
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
        for t in merged["available_node_types"].values()
    ]
    assert "spot" in markets
    head = merged["available_node_types"][merged["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"], "the head stays on-demand"


def test_aws_head_runs_mlflow_and_exports_its_uri_to_every_node():
    (config,) = _documents(CLUSTER / "aws.yaml")
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    # MLflow asks for a user and password, and writes S3 with its own prefix-only role.
    assert "mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000" in head
    assert "AWS_PROFILE=rayssl-mlflow" in head
    assert "role/rayssl-mlflow" in " ".join(config["head_setup_commands"])
    assert "MLFLOW_TRACKING_URI=http://$(hostname -I | cut -d' ' -f1):5000" in head
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker
    for commands in (head, worker):  # the same auth mode and token on every node
        assert "RAY_AUTH_MODE=token" in commands
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.rayssl-secrets/ray_auth_token" in commands
        assert ". $HOME/.rayssl-secrets/mlflow.env" in commands
    assert config["file_mounts"]["/home/ubuntu/.rayssl-secrets"] == "~/.rayssl-secrets"


def test_aws_pins_the_security_group_of_every_node_type():
    """Without SecurityGroupIds `ray up` creates a group of its own (SSH from anywhere)."""
    (config,) = _documents(CLUSTER / "aws.yaml")
    groups = {
        name: t["node_config"].get("SecurityGroupIds")
        for name, t in config["available_node_types"].items()
    }
    assert all(g and all(x.startswith("sg-") for x in g) for g in groups.values()), groups
    assert len({tuple(g) for g in groups.values()}) == 1, "one group: nodes reach each other"


#: Files that may set RAY_AUTH_MODE=disabled: none in cluster/ or the README. Loopback
#: demos and tests (rayssl/localhead.py, scripts/, tests/) set it in code, not here.
AUTH_FILES = [*TEXT_FILES, ROOT / "README.md"]
DISABLED = re.compile(r"RAY_AUTH_MODE=disabled|RAY_AUTH_MODE\s*\n\s*value:\s*disabled")


@pytest.mark.parametrize("path", AUTH_FILES, ids=_rel)
def test_no_cluster_file_turns_ray_authentication_off(path):
    assert not DISABLED.search(path.read_text()), f"{_rel(path)} sets RAY_AUTH_MODE=disabled"
    for doc in _documents(path) if path.suffix == ".yaml" else []:
        text = json.dumps(doc)
        assert '"value": "disabled"' not in text, _rel(path)


# --- KubeRay -----------------------------------------------------------------------


def _pod_containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _check_raycluster(cluster: dict) -> list[dict]:
    """KubeRay's required shape; returns every Ray container."""
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__, "the image's Ray must be the project's"
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    containers = _pod_containers(head["template"])
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names) >= 1
    for g in [head, *groups]:
        params = g["rayStartParams"]
        # KubeRay's rayStartParams is map[string]string: a YAML number is rejected.
        assert all(isinstance(v, str) for v in params.values()), params
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        containers += _pod_containers(g["template"])
    assert any(
        "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
        for g in groups
        for c in _pod_containers(g["template"])
    ), "no GPU worker group"
    return containers


def test_kuberay_raycluster_rayjob_and_mlflow_agree():
    ((_, cluster),) = _by_kind("RayCluster")
    ((_, job),) = _by_kind("RayJob")
    ((_, deployment),) = _by_kind("Deployment")
    ((_, service),) = _by_kind("Service")
    ray_containers = _check_raycluster(cluster)

    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    submitter = _pod_containers(job["spec"]["submitterPodTemplate"])
    mlflow = _pod_containers(deployment["spec"]["template"])
    images = {c["image"] for c in [*ray_containers, *submitter, *mlflow]}
    assert len(images) == 1, f"one image for every pod, got {images}"
    modes = {_env(c).get("RAY_AUTH_MODE") for c in [*ray_containers, *submitter]}
    assert modes == {"token"}, modes
    for c in [*ray_containers, *submitter]:  # one token, from one Secret, everywhere
        (token,) = [e for e in c["env"] if e["name"] == "RAY_AUTH_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": "rayssl-ray-token",
            "key": "auth_token",
        }
    for c in ray_containers:  # the train workers log to MLflow with its user
        names = {e["name"] for e in c["env"]}
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names
    ray_secrets = {ref["secretRef"]["name"] for c in ray_containers for ref in c["envFrom"]}
    assert ray_secrets == {"rayssl-s3"}
    # MLflow: basic auth, and S3 credentials of its own (its prefix only), not the pods'.
    assert {ref["secretRef"]["name"] for ref in mlflow[0]["envFrom"]} == {"rayssl-mlflow-s3"}
    assert "--app-name=basic-auth" in mlflow[0]["command"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in {e["name"] for e in mlflow[0]["env"]}

    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/rayssl"  # where the image has the repo
    uri = runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]
    host_port = uri.removeprefix("http://")
    host, port = host_port.split(":")
    assert host == service["metadata"]["name"] == deployment["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    allowed = next(a for a in mlflow[0]["command"] if a.startswith("--allowed-hosts="))
    assert host_port in allowed.split("=", 1)[1].split(","), "MLflow 3 would refuse the pods"


def test_kuberay_spot_variant_of_the_readme_is_a_valid_raycluster():
    ((_, cluster),) = _by_kind("RayCluster")
    spot = [b for b in _readme_yaml_blocks() if "workerGroupSpecs" in b.get("spec", {})]
    assert len(spot) == 1
    spec = copy.deepcopy(cluster["spec"])
    spec["enableInTreeAutoscaling"] = spot[0]["spec"]["enableInTreeAutoscaling"]
    spec["workerGroupSpecs"] = [
        g for g in spec["workerGroupSpecs"] if g["groupName"] != "gpu"
    ] + spot[0]["spec"]["workerGroupSpecs"]
    variant = {**cluster, "spec": spec}
    containers = _check_raycluster(variant)
    assert len({c["image"] for c in containers}) == 1
    (gpu,) = (g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] < gpu["maxReplicas"] and spec["enableInTreeAutoscaling"]


# --- commands and paths named in cluster/ ------------------------------------------


def _command_text(path: Path) -> str:
    """The file with comment markers dropped and continued lines joined."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        text = re.sub(r"(?m)^\s*# ?", "", text)
    return re.sub(r"\\\n", " ", text)


OVERRIDE = r"[a-z_]+(?:\.[a-z_]+)+=[^\s`'\"]*"
PRETRAIN = re.compile(rf"jobs/pretrain\.py\s+--config\s+(\S+\.ya?ml)((?:\s+{OVERRIDE})*)")


def _pretrain_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in TEXT_FILES:
        for config, overrides in PRETRAIN.findall(_command_text(path)):
            found.append((_rel(path), config, overrides.split()))
    return found


def test_every_pretrain_command_in_cluster_files_loads_its_config():
    from rayssl.config import load_config

    commands = _pretrain_commands()
    files = {f for f, _, _ in commands}
    assert {
        "cluster/aws.yaml",
        "cluster/kuberay/rayjob.yaml",
        "cluster/README.md",
        "cluster/local.md",
    } <= files
    for path, config, overrides in commands:
        assert (ROOT / config).is_file(), f"{path}: {config} does not exist"
        cfg = load_config(str(ROOT / config), overrides)  # ConfigError names the bad key
        assert cfg.data.manifest, f"{path}: no data.manifest"
        if path != "cluster/local.md":  # cluster runs: S3 for data and checkpoints
            assert cfg.data.manifest.startswith("s3://"), path
            assert cfg.run.storage_path.startswith("s3://"), path


def test_every_rayssl_manifest_command_in_cluster_files_parses():
    from rayssl.cli import build_parser

    pattern = re.compile(r"(?:python -m rayssl\.cli|rayssl) (manifest [^\n`]*)")
    commands = [(_rel(p), m) for p in TEXT_FILES for m in pattern.findall(_command_text(p))]
    assert len(commands) >= 3
    for path, command in commands:
        args = build_parser().parse_args(shlex.split(command))
        assert args.src.startswith("s3://") and args.out.endswith(".parquet"), path


# Not after `/`, `.`, `$`, `~`, `-` or a JSON key's `": "` (an S3 prefix in an IAM policy).
REPO_PATH = re.compile(
    r"(?<![\w/.$~-])(?<!\": \")((?:jobs|configs|cluster|docs|benchmarks|scripts|rayssl|tests)"
    r"/[\w./-]*\w)"
)


def test_every_repository_path_named_in_cluster_files_exists():
    named: dict[str, set[str]] = {}
    for path in TEXT_FILES:
        for ref in REPO_PATH.findall(path.read_text()):
            named.setdefault(ref, set()).add(_rel(path))
        if path.suffix == ".md":  # relative Markdown links
            for link in re.findall(r"\]\(([^)#\s]+)\)", path.read_text()):
                if "://" not in link:
                    target = (path.parent / link).resolve().relative_to(ROOT)
                    named.setdefault(str(target), set()).add(_rel(path))
    assert {"jobs/pretrain.py", "configs/pace_r21d_k400.yaml", "cluster/aws.yaml"} <= set(named)
    missing = {ref: sorted(files) for ref, files in named.items() if not (ROOT / ref).exists()}
    assert not missing, f"paths named in cluster/ that do not exist: {missing}"


def _policy_for(labels: dict[str, str]) -> dict:
    """The one NetworkPolicy whose podSelector selects pods with these labels."""
    found = [
        d
        for _, d in _by_kind("NetworkPolicy")
        if d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(found) == 1, f"NetworkPolicies selecting {labels}: {len(found)}"
    assert found[0]["spec"]["policyTypes"] == ["Ingress"]
    return found[0]


def _peers(rule: dict) -> list[dict[str, str]]:
    """The pod labels a rule admits; only podSelectors (no ipBlock, no namespace-wide)."""
    peers = rule.get("from")
    assert peers, "an ingress rule without `from` admits everyone"
    assert all(set(p) == {"podSelector"} for p in peers), peers
    return [p["podSelector"]["matchLabels"] for p in peers]


def test_kuberay_network_policy_admits_only_the_clusters_pods_to_the_ray_ports():
    ((_, cluster),) = _by_kind("RayCluster")
    ((_, job),) = _by_kind("RayJob")
    ((_, deployment),) = _by_kind("Deployment")
    own = {"ray.io/cluster": cluster["metadata"]["name"]}  # KubeRay labels every pod so
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    mlflow = deployment["spec"]["template"]["metadata"]["labels"]
    policy = _policy_for(own)
    for rule in policy["spec"]["ingress"]:
        peers = _peers(rule)
        if peers == [own]:
            continue  # the cluster's own pods: every port (raylets, workers, GCS)
        assert all(p in (submitter, mlflow) for p in peers), peers
        ports = {p["port"] for p in rule["ports"]}
        assert ports == {8265}, "others reach the job API only, never GCS 6379 or 10001"
    assert any(_peers(r) == [own] for r in policy["spec"]["ingress"])
    # MLflow's port: the Ray pods only.
    mlflow_policy = _policy_for(mlflow)
    ((rule),) = mlflow_policy["spec"]["ingress"]
    assert _peers(rule) == [own]
    assert {p["port"] for p in rule["ports"]} == {5000}
