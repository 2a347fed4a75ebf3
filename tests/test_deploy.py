"""deploy/: what can be checked without Docker or a cluster. The Grafana dashboard queries only
metrics (and labels) a real gateway exports; the YAML files parse and agree with each other; the
configs they ship are valid; the remote-only image's package exclusions match uv.lock; and the
gateway serves a remote backend with every one of those packages unimportable."""
from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import aiohttp
import pytest

from gateway.config import parse_config
from tests.conftest import TOKEN, gateway_config
from tests.support.net import free_port
from tests.upstream import FAIL, TEXT

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "compose" / "grafana" / "dashboards" / "claude-gateway.json"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
_PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "le", "without"}


def _exported(text: str) -> dict[str, set[str]]:
    """Sample name → label names, from a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ", 1)[0]
        labels = set(re.findall(r'(\w+)="', rest.split("}", 1)[0])) if rest else set()
        out.setdefault(name, set()).update(labels)
    return out


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


async def test_dashboard_queries_name_exported_metrics(start_upstream, start_gateway):
    ups = [await start_upstream("vllm") for _ in range(2)]
    busy = await start_upstream("openai")
    busy.default = FAIL(529, "busy")
    toml = gateway_config({
        "pool": {"type": "vllm", "base_url": [u.url for u in ups], "model": "test-model",
                 "model_mapping": {"claude-*": "test-model"}},
        "busy": {"type": "openai", "base_url": busy.url, "model": "test-model", "fallback": "pool",
                 "model_mapping": {"busy-model": "test-model"}},
    }, default="pool")
    gw = await start_gateway(toml)
    for up in ups:
        up.default = TEXT("hello", 3)
        up.default.usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                            "prompt_tokens_details": {"cached_tokens": 4}}
    for i in range(4):
        await gw.stream(BODY, **{"X-Claude-Code-Session-Id": f"s{i}"})
    assert (await gw.messages({**BODY, "model": "busy-model"}))[0] == 200  # a fallback
    ups[1].default = FAIL(500, "broken")
    ups[0].default = FAIL(500, "broken")
    assert (await gw.messages(BODY))[0] == 500  # an upstream error
    exported = _exported(await (await gw.get("/metrics")).text())

    for expr in _queries():
        names = [w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w.startswith("gateway_")]
        assert names, f"query names no gateway metric: {expr}"
        for name in names:
            assert name in exported, f"{name} (in {expr!r}) is not exported; exported: {sorted(exported)}"
            for group in re.findall(r"by \(([^)]*)\)", expr):
                for label in (x.strip() for x in group.split(",")):
                    assert label == "le" or label in exported[name], f"{name} has no label {label!r}"
    assert any("replica" in q for q in _queries()) and any("gateway_time_to_first_token" in q for q in _queries())


def _yaml(path: Path) -> list:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_compose_files_parse_and_agree():
    (compose,) = _yaml(DEPLOY / "compose" / "docker-compose.yml")
    assert {"gateway", "vllm", "prometheus", "grafana"} <= set(compose["services"])
    gateway = compose["services"]["gateway"]
    assert (DEPLOY / "compose" / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and not source.endswith("gateway_token"):  # the token file is the user's
                assert (DEPLOY / "compose" / source).exists(), f"{source} is mounted but not shipped"
    cfg = parse_config((DEPLOY / "compose" / "config.toml").read_text())
    (prometheus,) = _yaml(DEPLOY / "compose" / "prometheus.yml")
    target = prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host, port = target.split(":")
    assert host in cfg.server.allowed_hosts and int(port) == cfg.server.port
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    (provider,) = _yaml(DEPLOY / "compose" / "grafana" / "provisioning" / "dashboards" / "claude-gateway.yml")
    mounted = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]]
    assert provider["providers"][0]["options"]["path"] in mounted
    (datasource,) = _yaml(DEPLOY / "compose" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def test_kubernetes_files_parse_and_agree():
    docs = _yaml(DEPLOY / "kubernetes" / "claude-gateway.yaml") + _yaml(DEPLOY / "kubernetes" / "vllm.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "claude-gateway"), ("Service", "claude-gateway"), ("ConfigMap", "claude-gateway"),
            ("StatefulSet", "vllm"), ("Service", "vllm")} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = parse_config(config_map["data"]["config.toml"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == cfg.server.port
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    expected = [f"http://vllm-{i}.vllm:8000" for i in range(statefulset["spec"]["replicas"])]
    assert cfg.backends["vllm"].base_urls == expected
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.server.shutdown_grace_s


def _mlx_only_packages() -> set[str]:
    """Packages of uv.lock that only mlx and mlx-lm pull in."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}

    def closure(names) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name in seen or name not in packages:
                continue
            seen.add(name)
            todo += [d["name"] for d in packages[name].get("dependencies", [])]
            for deps in packages[name].get("optional-dependencies", {}).values():
                todo += [d["name"] for d in deps]
        return seen

    direct = [d["name"] for d in packages["claude-gateway"]["dependencies"]]
    return closure(direct) - closure(n for n in direct if n not in ("mlx", "mlx-lm"))


def test_image_exclusions_match_the_lock():
    listed = set((DEPLOY / "mlx-only-packages.txt").read_text().split())
    assert listed == _mlx_only_packages(), "regenerate deploy/mlx-only-packages.txt from uv.lock"
    assert "--no-install-package" in (DEPLOY / "Dockerfile").read_text()


# Import names of the packages the image leaves out: any import of them fails in the served process.
_BLOCKED = ("mlx", "mlx_lm", "transformers", "tokenizers", "numpy", "jinja2", "huggingface_hub", "safetensors",
            "sentencepiece", "yaml", "rich", "typer", "click", "regex", "tqdm", "fsspec", "filelock", "packaging",
            "pygments", "markupsafe", "markdown_it", "mdurl", "shellingham", "colorama", "hf_xet", "annotated_doc",
            "google.protobuf")
_RUNNER = """
import sys
BLOCKED = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"{{name}} is not installed in the remote-only image", name=name)
        return None
sys.meta_path.insert(0, Block())
from gateway.cli import main
sys.exit(main(["serve", "--config", {config!r}]))
"""


async def test_remote_backends_serve_without_the_mlx_packages(start_upstream, tmp_path):
    up = await start_upstream("vllm")
    config = tmp_path / "config.toml"
    toml = gateway_config({"up": {"type": "vllm", "base_url": [up.url], "model": "test-model"}}, default="up")
    port = free_port()
    config.write_text(toml.replace("port = 8082", f"port = {port}"))
    script = tmp_path / "remote_only.py"
    script.write_text(_RUNNER.format(blocked=_BLOCKED, config=str(config)))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), cwd=str(ROOT),
                                                stderr=asyncio.subprocess.PIPE)
    try:
        while b"listening on" not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
            assert line, "the gateway exited"
        async with aiohttp.ClientSession() as session:
            headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
            async with session.post(f"http://127.0.0.1:{port}/v1/messages", json=BODY, headers=headers) as resp:
                data = await resp.json()
        assert resp.status == 200 and data["content"][0]["text"] == "Hello there!", data
    finally:
        proc.terminate()
        await proc.wait()
