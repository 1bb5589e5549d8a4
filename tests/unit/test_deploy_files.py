"""contrib/docker and contrib/kubernetes agree with prefork_lb and with each other: the
Dockerfile has the shape tools/check_dockerfile.py checks (and that checker's parser works), the
Deployment's probes name the admin port its args bind, its grace period covers
--shutdown-delay plus --graceful-timeout, and the Service, PodDisruptionBudget and autoscaler
select and target the Deployment. (CI also validates the manifests against Kubernetes' schema
with kubernetes-validate, lints the Dockerfile with hadolint and performs its steps.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from prefork_lb.cli import parse
from prefork_lb.sockets import parse_address

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "contrib" / "kubernetes"
DOCKERFILE = ROOT / "contrib" / "docker" / "Dockerfile"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_dockerfile", ROOT / "tools" / "check_dockerfile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_dockerfile"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


checker = load_checker()


def manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def kube() -> dict[str, dict[str, Any]]:
    return manifests()


def container(kube: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = kube["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def port_number(c: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    (n,) = [p["containerPort"] for p in c["ports"] if p["name"] == ref]
    return int(n)


def test_every_kind_is_there(kube: dict[str, dict[str, Any]]) -> None:
    assert set(kube) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def test_the_container_args_are_a_valid_command_line(kube: dict[str, dict[str, Any]]) -> None:
    args = container(kube)["args"]
    assert args[:3] == ["python", "-m", "prefork_lb"]
    cfg = parse(args[3:], environ={})
    assert cfg.app_uri == "prefork_lb.demo:app"
    assert cfg.shutdown_delay > 0


def test_probes_are_on_the_admin_port_the_args_bind(kube: dict[str, dict[str, Any]]) -> None:
    c = container(kube)
    cfg = parse(c["args"][3:], environ={})
    admin = parse_address(cfg.stats_bind)
    public = parse_address(cfg.bind[0])
    assert admin.host == "0.0.0.0" and public.host == "0.0.0.0"  # reachable by the kubelet
    assert port_number(c, "http") == public.port and port_number(c, "admin") == admin.port
    paths = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    for probe, path in paths.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(c, get["port"]) == admin.port, probe
    assert kube["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        admin.port
    )


def test_the_grace_period_covers_the_delay_and_the_drain(kube: dict[str, dict[str, Any]]) -> None:
    spec = kube["Deployment"]["spec"]["template"]["spec"]
    cfg = parse(container(kube)["args"][3:], environ={})
    assert spec["terminationGracePeriodSeconds"] >= cfg.shutdown_delay + cfg.graceful_timeout
    # the readiness probe notices the 503 within the delay
    ready = container(kube)["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= cfg.shutdown_delay
    # a preStop hook's time would count against the grace period too
    assert "preStop" not in container(kube).get("lifecycle", {})


def test_non_root_with_limits(kube: dict[str, dict[str, Any]]) -> None:
    c = container(kube)
    pod = kube["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    user = checker.last(checker.parse(DOCKERFILE.read_text()), "USER")
    assert str(pod["runAsUser"]) == user.args.strip()  # the image's user
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind


def test_service_pdb_and_autoscaler_point_at_the_deployment(kube: dict[str, dict[str, Any]]) -> None:
    dep = kube["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = kube["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    (port,) = svc["ports"]
    assert port_number(container(kube), port["targetPort"]) == 8000
    assert kube["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kube["PodDisruptionBudget"]["spec"]["minAvailable"] < dep["spec"]["replicas"]
    hpa = kube["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["minReplicas"] == dep["spec"]["replicas"]


# -- the Dockerfile and its checker -------------------------------------------------------------


def test_the_dockerfile_has_the_checked_shape() -> None:
    instructions = checker.parse(DOCKERFILE.read_text())
    assert checker.check_shape(instructions) == []
    cmd = checker.last(instructions, "CMD").words()
    assert cmd[:4] == ["python", "-m", "prefork_lb", "prefork_lb.demo:app"]
    parse(cmd[3:], environ={})  # a valid command line


def test_the_parser_joins_continuations_and_reads_both_forms() -> None:
    text = (
        '# a comment\nFROM python:3.12-slim\nENV A=1 \\\n    B="two words"\n'
        'HEALTHCHECK --interval=5s \\\n  CMD ["python", "-c", "print(1)"]\n'
        "RUN pip install . \\\n  # inside\n  && echo done\nCMD python -m x\n"
    )
    got = checker.parse(text)
    assert [i.name for i in got] == ["FROM", "ENV", "HEALTHCHECK", "RUN", "CMD"]
    assert checker.env_pairs(got[1].args) == {"A": "1", "B": "two words"}
    assert got[2].flags == {"interval": "5s"} and got[2].words() == ["python", "-c", "print(1)"]
    assert got[3].args == "pip install . && echo done"
    assert got[4].words() == ["/bin/sh", "-c", "python -m x"]
    assert checker.env_pairs("OLD value here") == {"OLD": "value here"}


def test_the_shape_check_names_each_problem() -> None:
    bad = checker.parse('FROM python:3.11\nUSER root\nHEALTHCHECK CMD curl -f http://x/livez\nCMD ["x"]\n')
    problems = checker.check_shape(bad)
    assert "FROM must be a python:*-slim image" in problems
    assert "USER must be a non-root user" in problems
    assert "STOPSIGNAL must be SIGTERM (the graceful stop)" in problems
    assert any("curl" in p for p in problems)
    assert any("CMD must bind" in p for p in problems)


def test_dockerignore_keeps_only_the_package() -> None:
    patterns = checker.ignore_patterns(DOCKERFILE, ROOT)
    assert not checker.ignored("prefork_lb/cli.py", patterns)
    assert not checker.ignored("setup.cfg", patterns)
    assert checker.ignored("tests/helpers.py", patterns)
    assert checker.ignored(".venv/bin/python", patterns)
    assert checker.ignored("prefork_lb/__pycache__/cli.cpython-311.pyc", patterns)


def test_container_ports_become_free_loopback_ports() -> None:
    words = ["-b", "0.0.0.0:8000", "--stats-bind", "0.0.0.0:9000", "u.urlopen('http://127.0.0.1:9000/livez')"]
    assert checker.on_free_ports(words, {8000: 1234, 9000: 5678}) == [
        "-b",
        "127.0.0.1:1234",
        "--stats-bind",
        "127.0.0.1:5678",
        "u.urlopen('http://127.0.0.1:5678/livez')",
    ]
