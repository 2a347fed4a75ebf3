"""`claude-gateway models --local` and the model warnings of `check`, as real subprocesses over a
scratch Hugging Face cache filled by `pull` from the local stand-in for the hub."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fake_hub import FakeHub
from tests.gateway_process import ROOT
from tests.test_pull import REPO, hub_env, make_model_dir, run_pull


@pytest.fixture
def hub(tmp_path):
    h = FakeHub().start()
    h.add_dir(REPO, make_model_dir(tmp_path / "src"))
    plain = make_model_dir(tmp_path / "plain")
    (plain / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    h.add_dir("other-org/plain", plain)
    yield h
    h.stop()


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_models_local_lists_cached_and_configured_models_with_what_maps_to_them(hub, tmp_path):
    env = hub_env(tmp_path, hub.url)
    assert run_pull(env, REPO, "other-org/plain").returncode == 0
    on_disk = make_model_dir(tmp_path / "on-disk", context=131072)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[log]\nrequests = ""\n[backends.m]\ntype = "mlx"\nmodel = "{REPO}"\n'
                   f'[backends.m.model_mapping]\n"claude-sonnet-*" = "{REPO}"\n'
                   f'"claude-haiku-*" = "test-org/missing"\n"claude-opus-*" = "{on_disk}"\n')
    proc = cli(env, "models", "--local", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "SIZE", "QUANTISATION", "CONTEXT", "CONFIG", "NAMES"]
    tiny = next(line for line in lines if line.startswith(REPO))
    assert "2.9 MB" in tiny and "4-bit, group 64" in tiny and "40960" in tiny
    assert "m: default, m: claude-sonnet-*" in tiny
    local = next(line for line in lines if line.startswith(str(on_disk)))
    assert "131072" in local and "m: claude-opus-*" in local
    assert not any(line.startswith("other-org/plain") for line in lines)  # not MLX, not named
    assert "not local: test-org/missing (m: claude-haiku-*): run `claude-gateway pull test-org/missing`" in lines


def test_models_local_on_an_empty_cache(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[log]\nrequests = ""\n[backends.m]\ntype = "mlx"\nmodel = "{REPO}"\n')
    proc = cli(hub_env(tmp_path, "http://127.0.0.1:9"), "models", "--local", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["no MLX models on this machine yet",
                                        f"not local: {REPO} (m: default): run `claude-gateway pull {REPO}`"]


def test_check_warns_about_missing_models_and_a_small_window(demo_model, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[log]\nrequests = ""\n[backends.m]\ntype = "mlx"\nmodel = "{demo_model}"\n'
                   f'context_window = 32768\n[backends.m.model_mapping]\n"claude-haiku-*" = "test-org/missing"\n'
                   f'[backends.big]\ntype = "mlx"\nmodel = "{demo_model}"\ndownload_on_demand = true\n'
                   f'[backends.big.model_mapping]\n"claude-opus-*" = "test-org/later"\n')
    proc = cli(hub_env(tmp_path, "http://127.0.0.1:9"), "check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings do not fail the check
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        ("warning: backend 'm': test-org/missing is not downloaded yet; run `claude-gateway pull test-org/missing` "
        "(until then requests for it get 503)"),
        ("warning: backend 'big': test-org/later is not downloaded yet; run `claude-gateway pull test-org/later` "
        "(download_on_demand is set: the first request for it downloads it)"),
        ("warning: backend 'm' has a 32768-token context window; Claude Code's own prompt with its default tools "
        "needs about 48000 tokens, so it overflows or compacts at once. Use a model with a larger window (or "
        "raise context_window if the model supports more)."),
    ]
