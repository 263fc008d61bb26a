"""The deployment files hold together: parsed and checked, since Docker and a cluster are not here.

deploy/compose.yaml and deploy/kubernetes/*.yaml: every server is health-checked through the
gRPC health service (Compose: ``python -m linkage.health`` with the container's own
certificate; Kubernetes: native ``grpc:`` probes on the plaintext health port), is configured by
LINKAGE_* environment variables only (its command names the system, nothing else), and those
variables are ones the code reads and give ``linkage serve`` everything it requires. The
platforms run replicas on one database, reached through every replica; every database a URL
names is created; the Dockerfile installs what the servers read at run time.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from linkage import serve
from linkage.rpc import LIVENESS_SERVICE
from simulator import world_cli

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REQUIRED = {  # what `linkage serve SYSTEM` refuses to start without
    "network": (),
    "registry": ("network",),
    "server": ("network", "tenant"),
    "unified-address": ("org", "server", "registry"),
}
SOURCES = ("linkage/serve.py", "linkage/rpc.py", "linkage/health.py", "linkage/logs.py")


def _known_variables() -> set[str]:
    """Every LINKAGE_* variable the code reads."""
    names: set[str] = set()
    for source in SOURCES:
        code = (ROOT / source).read_text()
        names |= {f"LINKAGE_{n}" for n in re.findall(r'\benv\(\s*"([A-Z_]+)"', code)}
        names |= set(re.findall(r'"(LINKAGE_[A-Z_]+)"', code))
    return names


def _serve_args(command: list[str], env: Mapping[str, str]) -> argparse.Namespace:
    """How ``linkage serve`` reads ``command`` in the environment ``env``."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, str(value))
        return serve.build_parser().parse_args(command[1:])


def _check_server(name: str, command: list[str], env: Mapping[str, str]) -> argparse.Namespace:
    assert command[0] == "serve", name
    assert len(command) == 2, f"{name}: configure by environment, not by options"
    unknown = {k for k in env if k.startswith("LINKAGE_")} - _known_variables()
    assert not unknown, f"{name}: variables nothing reads: {unknown}"
    args = _serve_args(command, env)
    missing = [option for option in REQUIRED[args.system] if not getattr(args, option)]
    assert not missing, f"{name}: missing {missing}"
    assert env.get("LINKAGE_HOST") == "0.0.0.0", f"{name}: must listen beyond loopback"  # noqa: S104
    return args


# --- Compose ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed (anchors and merge keys resolved)."""
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _compose_services(compose: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return {n: s for n, s in services.items() if s.get("labels", {}).get("linkage.role") == role}


def test_every_compose_service_has_a_role_and_every_long_running_one_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        role = service.get("labels", {}).get("linkage.role")
        assert role in ("server", "job", "database"), name
        if role == "job":
            assert service["restart"] == "no", name
            continue
        check = service["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL"), name
        assert len(check) > 1, name
        assert service["restart"] == "unless-stopped", name


def test_compose_servers_are_configured_by_environment_and_probed_as_themselves(
    compose: dict[str, Any],
) -> None:
    servers = _compose_services(compose, "server")
    assert {"network", "registry", "platform-municipal", "ua-sakai"} <= set(servers)
    for name, service in servers.items():
        args = _check_server(name, service["command"], service["environment"])
        identity = serve._identity(args)
        check = service["healthcheck"]["test"]
        assert check[1:4] == ["python", "-m", "linkage.health"], name
        assert f"--identity={identity}" in check, name
        assert "127.0.0.1:50051" in check, name
        assert "/pki" in {v.split(":")[1] for v in service["volumes"]}, name


def test_compose_platform_replicas_share_one_database_and_one_data_volume(
    compose: dict[str, Any],
) -> None:
    municipal = compose["services"]["platform-municipal"]
    assert municipal["deploy"]["replicas"] >= 3
    assert "municipal-data:/var/lib/linkage/data" in municipal["volumes"]
    assert municipal["environment"]["LINKAGE_GRPC_LB_POLICY"] == "round_robin"


def test_compose_jobs_make_the_pki_and_register_every_platform(compose: dict[str, Any]) -> None:
    jobs = _compose_services(compose, "job")
    assert set(jobs) == {"pki", "register"}
    register = jobs["register"]
    assert register["command"][:2] == ["world", "register"]
    args = world_cli._parser().parse_args(register["command"][1:])
    platforms = {n.removeprefix("platform-") for n in compose["services"] if "platform-" in n}
    endpoints = dict(item.split("=", 1) for item in args.endpoint)
    data = dict(item.split("=", 1) for item in args.platform_data)
    assert set(endpoints) == set(data) == platforms
    mounts = {v.split(":")[1]: v.split(":")[0] for v in register["volumes"]}
    for platform in platforms:
        assert endpoints[platform] == f"platform-{platform}:50051"
        assert mounts[data[platform]] == f"{platform}-data"
    pki = jobs["pki"]["command"]
    for name, service in _compose_services(compose, "server").items():
        identity = serve._identity(_serve_args(service["command"], service["environment"]))
        assert f"--identity={identity}" in pki, name
    for name in compose["services"]:
        if name.startswith("ua-"):
            depends = compose["services"][name]["depends_on"]
            assert depends["register"]["condition"] == "service_completed_successfully"


def _databases(urls: Iterator[str]) -> set[str]:
    return {url.rsplit("/", 1)[1].split("?")[0] for url in urls}


def test_every_database_a_compose_url_names_is_created(compose: dict[str, Any]) -> None:
    urls = (
        s["environment"]["LINKAGE_DATABASE_URL"]
        for s in _compose_services(compose, "server").values()
    )
    created = set(re.findall(r"CREATE DATABASE (\w+);", (DEPLOY / "postgres/init.sql").read_text()))
    assert _databases(urls) == created


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """Every document of deploy/kubernetes/*.yaml."""
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}


def _config(manifests: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _kind(manifests, "ConfigMap")["linkage-env"]["data"]
    return data


def _env_of(container: dict[str, Any], config: Mapping[str, str]) -> dict[str, str]:
    """The container's LINKAGE_* environment (a secret reference stands for its value)."""
    env = dict(config) if container.get("envFrom") else {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from a secret>")
    return env


def test_every_manifest_is_in_the_namespace_and_known_to_the_cluster(
    manifests: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in manifests}
    assert kinds <= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "Job",
    }
    for doc in manifests:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "linkage", doc["metadata"]["name"]


def test_every_kubernetes_server_has_grpc_probes_and_environment_config(
    manifests: list[dict[str, Any]],
) -> None:
    config = _config(manifests)
    database = _kind(manifests, "Secret")["linkage-database"]["stringData"]
    health_port = int(config["LINKAGE_HEALTH_PORT"])
    deployments = _kind(manifests, "Deployment")
    assert len(deployments) >= 11
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, (name, probe)
        env = _env_of(container, config)
        args = _check_server(name, container["args"], env)
        (url,) = [e for e in container["env"] if e["name"] == "LINKAGE_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"]["key"] in database, name
        secrets = {v["name"]: v for v in pod["volumes"]}
        assert secrets["pki-secret"]["secret"]["secretName"] == f"pki-{name}", name
        assert f"pki-{name}" in (DEPLOY / "kubernetes/make-secrets.sh").read_text() or (
            name.startswith("ua-") and "pki-ua-$org" in _script()
        ), name
        assert serve._identity(args), name


def test_kubernetes_liveness_probes_ignore_the_database_and_readiness_probes_follow_it(
    manifests: list[dict[str, Any]],
) -> None:
    for name, deployment in _kind(manifests, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        liveness = container["livenessProbe"]["grpc"].get("service", "")
        readiness = container["readinessProbe"]["grpc"].get("service", "")
        assert (liveness, readiness) == (LIVENESS_SERVICE, ""), name


def _script() -> str:
    return (DEPLOY / "kubernetes/make-secrets.sh").read_text()


def test_kubernetes_platforms_are_replicas_behind_headless_services(
    manifests: list[dict[str, Any]],
) -> None:
    deployments = _kind(manifests, "Deployment")
    services = _kind(manifests, "Service")
    claims = _kind(manifests, "PersistentVolumeClaim")
    for name in ("platform-municipal", "platform-jps", "platform-insurers"):
        assert deployments[name]["spec"]["replicas"] >= 2, name
        assert services[name]["spec"]["clusterIP"] == "None", name  # DNS names every replica
        assert claims[f"{name}-data"]["spec"]["accessModes"] == ["ReadWriteMany"], name
    for name in deployments:
        selector = deployments[name]["spec"]["selector"]["matchLabels"]
        assert services[name]["spec"]["selector"] == selector, name
    assert _config(manifests)["LINKAGE_GRPC_LB_POLICY"] == "round_robin"


def test_the_register_job_reaches_every_platform_through_its_service(
    manifests: list[dict[str, Any]],
) -> None:
    (container,) = _kind(manifests, "Job")["register-organizations"]["spec"]["template"]["spec"][
        "containers"
    ]
    args = world_cli._parser().parse_args(container["args"][1:])
    services = _kind(manifests, "Service")
    for item in args.endpoint:
        platform, address = item.split("=", 1)
        assert address == f"platform-{platform}.linkage.svc.cluster.local:50051"
        assert f"platform-{platform}" in services


# --- the image ---------------------------------------------------------------------------------


def test_the_dockerfile_installs_what_the_servers_read_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"packages = \[([^\]]*)\]", pyproject)
    assert packages is not None
    for package in re.findall(r'"(\w+)"', packages.group(1)):
        assert f"COPY {package} ./{package}" in text, package
    assert "COPY migrations ./migrations" in text  # linkage.db.migrate reads them at start-up
    assert "pip install -e '.[postgres]'" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert 'ENTRYPOINT ["linkage"]' in text
    assert re.search(r"^EXPOSE 50051 8081$", text, re.MULTILINE)
