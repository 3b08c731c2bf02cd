"""Static checks of deploy/: no Docker daemon or cluster here, so validate what can be.

Every YAML/JSON file parses; the dashboard only queries metrics that
``streams.metrics.Metrics`` exports; every ``XSP_*`` variable is a real
setting and every value is one ``Settings.from_env`` accepts; every ``xsp``
command is one the CLI has; images are a known set; ports, paths, names and
label selectors agree between the compose file, the Kubernetes manifests,
the Prometheus configs and the Grafana provisioning.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.kafka_local import KAFKA_VERSION
from streams.metrics import Metrics
from streams.settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ALLOWED_COMMANDS = {"worker", "topics", "mock-adserver", "lag", "kafka", "dev"}
TOPICS_ACTIONS = {"create", "list"}
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
XSP_IMAGE = f"xsp:{PROJECT_VERSION}"
KNOWN_IMAGES = {
    f"apache/kafka:{KAFKA_VERSION}",  # the broker version the tests run against
    "prom/prometheus:v3.5.0",
    "grafana/grafana:12.1.1",
    "python:3.11-slim",
    XSP_IMAGE,  # built from deploy/Dockerfile
}
ENV_NAMES = set(ENV_VARS.values()) | {"XSP_KAFKA_HOME"}


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, argument) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, argument = line.partition(" ")
            pairs.append((instruction.upper(), argument.strip()))
    return pairs


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, argument in dockerfile():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(argument))
    return env


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "xsp.json").read_text())


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dash["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def promql_of_dashboard(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dash) for t in p.get("targets", [])]
    for variable in dash.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def xsp_image_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in compose()["services"].items() if svc.get("image") == XSP_IMAGE
    }


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- parsing ------------------------------------------------------------------


def test_every_deploy_file_parses() -> None:
    yamls = yaml_files()
    assert len(yamls) >= 10, [p.name for p in yamls]
    for path in yamls:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs if d is not None), path
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert jsons
    for path in jsons:
        assert isinstance(json.loads(path.read_text()), dict), path
    for path in DEPLOY.rglob("*.xml"):
        ET.parse(path)
    instructions = [i for i, _ in dockerfile()]
    assert instructions[0] == "FROM"
    assert {"ENTRYPOINT", "CMD", "EXPOSE", "VOLUME"} <= set(instructions)


def test_k8s_manifests_have_the_required_objects_and_kustomization_lists_them_all() -> None:
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Job",
            "Kustomization",
            "Namespace",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "StatefulSet",
        ]
    )
    for doc in k8s_docs():
        assert doc.get("apiVersion"), doc["kind"]
        if doc["kind"] not in {"Namespace", "Kustomization"}:
            assert doc["metadata"]["namespace"] == "xsp", doc["metadata"]["name"]
    listed = set(k8s("Kustomization")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# -- metrics -------------------------------------------------------------------


def test_dashboard_queries_only_metrics_the_worker_exports() -> None:
    exported = Metrics().sample_names()
    exprs = promql_of_dashboard(dashboard())
    referenced = {name for expr in exprs for name in re.findall(r"\bxsp_[a-z0-9_]+", expr)}
    assert referenced, "the dashboard queries no xsp metric"
    assert referenced <= exported, f"not exported: {sorted(referenced - exported)}"


def test_dashboard_covers_lag_throughput_decisions_errors_latency_and_spend() -> None:
    text = "\n".join(promql_of_dashboard(dashboard()))
    for needed in [
        "xsp_consumer_lag",
        "xsp_events_in_total",
        "xsp_events_out_total",
        "xsp_decisions_total",
        "xsp_vast_errors_total",
        "xsp_dead_letters_total",
        "xsp_http_hop_duration_seconds_bucket",
        "xsp_decision_latency_seconds_bucket",
        "xsp_spend_micros_total",
        "xsp_budget_micros",
    ]:
        assert needed in text, needed


def test_dashboard_panels_use_the_provisioned_datasource_and_have_unique_ids() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    uids = {d["uid"] for d in datasources["datasources"]}
    dash = dashboard()
    panels = all_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
            # Balanced brackets catch most broken hand edits of PromQL.
            for open_, close in ("()", "[]", "{}"):
                assert target["expr"].count(open_) == target["expr"].count(close), target
    for variable in dash["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids


# -- settings and commands -----------------------------------------------------


def test_only_real_xsp_settings_are_referenced() -> None:
    found: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            found |= set(re.findall(r"\bXSP_[A-Z0-9_]+", path.read_text(errors="replace")))
    assert found, "no XSP_* variable referenced at all"
    assert found <= ENV_NAMES, f"unknown settings: {sorted(found - ENV_NAMES)}"


@pytest.mark.parametrize("source", ["compose", "configmap", "dockerfile"])
def test_settings_values_are_accepted_by_settings_from_env(source: str) -> None:
    if source == "compose":
        env = compose()["x-xsp-env"]
    elif source == "configmap":
        env = k8s("ConfigMap", "xsp-config")["data"]
    else:
        env = dockerfile_env()
    assert all(isinstance(value, str) for value in env.values()), env
    settings = Settings.from_env(env)
    assert settings.store == "rocksdb://"
    assert settings.web_host == "0.0.0.0"  # containers: reachable by Prometheus
    assert str(settings.data_dir) == "/var/lib/xsp"


def check_xsp_args(args: list[str], where: str) -> None:
    assert args, f"{where}: no xsp command"
    assert args[0] in ALLOWED_COMMANDS, f"{where}: xsp {args[0]} is not a command"
    if args[0] == "topics":
        assert args[1] in TOPICS_ACTIONS, where


def test_every_xsp_command_exists() -> None:
    instructions = dict(dockerfile())
    assert json.loads(instructions["ENTRYPOINT"]) == ["xsp"]
    check_xsp_args(json.loads(instructions["CMD"]), "Dockerfile CMD")

    services = xsp_image_services()
    assert {"topics", "worker", "mock-adserver"} <= set(services)
    for name, svc in services.items():
        assert "entrypoint" not in svc, name  # the image's ENTRYPOINT is xsp
        check_xsp_args(svc["command"], f"compose {name}")

    containers = [
        c
        for doc in k8s_docs()
        if doc["kind"] in {"StatefulSet", "Job"}
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert len(containers) == 2
    for container in containers:
        assert container["command"] == ["xsp"], container["name"]
        check_xsp_args(container["args"], f"k8s {container['name']}")

    # Commands named in comments and docs (`xsp <cmd>` in backticks, or after VAR=...).
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for cmd in re.findall(r"(?:`|[A-Z_]+=\S+ )xsp ([a-z][a-z-]*)", text):
                assert cmd in ALLOWED_COMMANDS, f"{path.name}: xsp {cmd}"


def test_images_are_known() -> None:
    images = {svc["image"] for svc in compose()["services"].values()}
    images |= {
        c["image"]
        for doc in k8s_docs()
        if doc["kind"] in {"StatefulSet", "Job"}
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    images |= {arg for instruction, arg in dockerfile() if instruction == "FROM"}
    assert images <= KNOWN_IMAGES, f"unknown images: {sorted(images - KNOWN_IMAGES)}"
    for name, svc in xsp_image_services().items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


# -- consistency of ports, paths and names ---------------------------------------


def test_compose_ports_and_paths_agree() -> None:
    spec = compose()
    services = spec["services"]
    env = spec["x-xsp-env"]
    web_port = int(env["XSP_WEB_PORT"])

    worker = services["worker"]
    assert worker["environment"] == env
    assert [int(p) for p in worker["expose"]] == [web_port]
    assert env["XSP_DATA_DIR"] in worker["volumes"]  # an anonymous volume per container

    prometheus = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "xsp-worker")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == web_port

    # Workers reach Kafka on a listener the broker advertises under its service name.
    host, port = env["XSP_BOOTSTRAP_SERVERS"].rsplit(":", 1)
    assert host in services
    advertised = services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith(f"//{host}:{port}") for a in advertised), advertised
    listeners = services[host]["environment"]["KAFKA_LISTENERS"]
    assert f":{port}" in listeners

    # The workers' SSRF allow-list admits the compose network, or no VAST
    # request could reach the mock ad server.
    (subnet,) = (c["subnet"] for c in spec["networks"]["default"]["ipam"]["config"])
    allowed = [ipaddress.ip_network(n) for n in env["XSP_VAST_ALLOWED_NETWORKS"].split(",")]
    assert any(ipaddress.ip_network(subnet).subnet_of(n) for n in allowed)

    mock = services["mock-adserver"]
    command = mock["command"]
    mock_port = int(command[command.index("--port") + 1])
    assert [port_of(p) for p in mock["ports"]] == [mock_port]

    # Every published port binds to the host's loopback only.
    for name, svc in services.items():
        for published in svc.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name}: {published}"

    # Grafana: datasource URL points at the prometheus service; dashboards mounted
    # where the provider reads them; mounted host paths exist.
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    url = datasources["datasources"][0]["url"]
    assert url == f"http://prometheus:{port_of(services['prometheus']['ports'][0])}"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/xsp.yaml")["providers"][0]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).exists(), f"{name}: {volume}"


def test_dockerfile_matches_the_settings_it_sets() -> None:
    env = dockerfile_env()
    exposed = {
        int(p) for instruction, arg in dockerfile() if instruction == "EXPOSE" for p in arg.split()
    }
    assert int(env["XSP_WEB_PORT"]) in exposed
    assert 8089 in exposed
    volumes = [json.loads(arg) for instruction, arg in dockerfile() if instruction == "VOLUME"]
    assert volumes == [[env["XSP_DATA_DIR"]]]
    copied = [arg.split()[0] for instruction, arg in dockerfile() if instruction == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), source


def test_k8s_ports_names_and_selectors_agree() -> None:
    config = k8s("ConfigMap", "xsp-config")
    web_port = int(config["data"]["XSP_WEB_PORT"])
    sts = k8s("StatefulSet", "xsp-worker")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]

    assert container["envFrom"] == [{"configMapRef": {"name": "xsp-config"}}]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": web_port}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(web_port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] in ports

    # RocksDB: the claim template is mounted at XSP_DATA_DIR.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["data"]["XSP_DATA_DIR"]

    headless = k8s("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    metrics_svc = k8s("Service", "xsp-worker-metrics")
    for svc in (headless, metrics_svc):
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["port"] == web_port and port["targetPort"] in ports
    assert metrics_svc["metadata"]["annotations"]["prometheus.io/port"] == str(web_port)
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    job = k8s("Job", "xsp-topics-create")
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    assert job_container["envFrom"] == container["envFrom"]
    assert job_container["image"] == container["image"] == XSP_IMAGE

    prometheus = load_yaml(DEPLOY / "prometheus/prometheus-k8s.yml")
    (job_config,) = prometheus["scrape_configs"]
    (sd,) = job_config["kubernetes_sd_configs"]
    assert sd["namespaces"]["names"] == [config["metadata"]["namespace"]]
    keep = {
        tuple(r["source_labels"]): r["regex"]
        for r in job_config["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keep[("__meta_kubernetes_service_name",)] == metrics_svc["metadata"]["name"]
    assert keep[("__meta_kubernetes_endpoint_port_name",)] in ports
