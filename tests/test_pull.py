"""`claude-gateway pull`: downloads from a local stand-in for the Hugging Face hub (HF_ENDPOINT),
into a scratch Hugging Face cache (HF_HOME), as a real subprocess."""
from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub
from tests.gateway_process import ROOT
from tests.support.net import free_port

REPO = "test-org/tiny"
WEIGHTS = 3_000_000


def make_model_dir(root: Path, context: int = 40960) -> Path:
    """Files shaped like an mlx-community repo (random weights; nothing here loads them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3", "max_position_embeddings": context,
                                                  "quantization": {"group_size": 64, "bits": 4}}))
    (root / "model.safetensors").write_bytes(hashlib.sha256(b"w").digest() * (WEIGHTS // 32) + b"x" * (WEIGHTS % 32))
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "README.md").write_text("not an mlx-lm file: pull leaves it out\n")
    return root


@pytest.fixture
def hub(tmp_path):
    h = FakeHub().start()
    h.add_dir(REPO, make_model_dir(tmp_path / "src"))
    yield h
    h.stop()


def hub_env(tmp_path: Path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def run_pull(env: dict, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "pull", *args], check=False, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def snapshot(tmp_path: Path, hub: FakeHub, repo: str = REPO) -> Path:
    return tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.repos[repo].commit


def test_pull_downloads_verifies_and_a_second_pull_downloads_nothing(hub, tmp_path):
    env = hub_env(tmp_path, hub.url)
    proc = run_pull(env, REPO)
    assert proc.returncode == 0, proc.stderr
    snap = snapshot(tmp_path, hub)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (snap / name).read_bytes() == hub.repos[REPO].files[name]
    assert not (snap / "README.md").exists()
    assert "3 files" in proc.stderr and "downloaded and verified" in proc.stderr
    assert "model.safetensors (2.9 MB)" in proc.stderr  # off a terminal: one line per file
    assert (tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text() \
        == hub.repos[REPO].commit
    gets = len(hub.gets())
    assert gets == 3

    again = run_pull(env, REPO)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert len(hub.gets()) == gets  # nothing fetched again


def test_a_connection_dropped_mid_file_resumes_where_it_stopped(hub, tmp_path):
    # Big enough that huggingface_hub has written some chunks to disk when the connection drops.
    src = make_model_dir(tmp_path / "big")
    (src / "model.safetensors").write_bytes(os.urandom(24 << 20))
    hub.add_dir("test-org/big", src)
    cut = 15 << 20
    hub.drop_after["model.safetensors"] = cut
    proc = run_pull(hub_env(tmp_path, hub.url), "test-org/big")
    assert proc.returncode == 0, proc.stderr
    weights = hub.gets("model.safetensors")
    assert len(weights) == 2
    resumed = {k.lower(): v for k, v in weights[1][1].items()}.get("range", "")
    assert re.fullmatch(r"bytes=\d+-", resumed) and 0 < int(resumed[6:-1]) <= cut, resumed  # not from the start
    assert (snapshot(tmp_path, hub, "test-org/big") / "model.safetensors").read_bytes() == \
        hub.repos["test-org/big"].files["model.safetensors"]


def test_a_corrupted_file_is_removed_and_the_next_pull_fetches_it_again(hub, tmp_path):
    env = hub_env(tmp_path, hub.url)
    hub.corrupt.add("model.safetensors")
    proc = run_pull(env, REPO)
    assert proc.returncode == 1
    assert "arrived corrupted" in proc.stderr and "sha256" in proc.stderr and "Traceback" not in proc.stderr
    assert not (snapshot(tmp_path, hub) / "model.safetensors").exists()
    hub.corrupt.clear()
    proc = run_pull(env, REPO)
    assert proc.returncode == 0, proc.stderr
    assert "2 files" in proc.stderr  # the rest; config.json, fetched before, was kept
    assert len(hub.gets("config.json")) == 1
    assert (snapshot(tmp_path, hub) / "model.safetensors").read_bytes() == hub.repos[REPO].files["model.safetensors"]


def test_progress_on_a_terminal_shows_each_file_with_size_rate_and_eta(hub, tmp_path):
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "pull", REPO], env=hub_env(tmp_path, hub.url),
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(30) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    bar = next(line for line in re.split(r"[\r\n]", text) if line.startswith("model.safetensors:") and "100%" in line)
    assert "2.86M/2.86M" in bar  # the file's size (binary units)
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, *[\d.]+[kMG]?B/s\]", bar), bar  # elapsed < ETA, rate
    assert "config.json:" in text and "tokenizer.json:" in text  # a bar per file
    assert "model.safetensors (2.9 MB)" not in text  # the plain lines are for logs, not terminals


def _paragraph(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("claude-gateway: ") and "pulling" not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_offline_is_one_paragraph_saying_what_to_do(tmp_path):
    proc = run_pull(hub_env(tmp_path, f"http://127.0.0.1:{free_port()}"), REPO)
    assert proc.returncode == 1
    text = _paragraph(proc.stderr)
    assert "cannot be reached" in text and f"claude-gateway pull {REPO}" in text
    assert "HF_ENDPOINT" in text and "local directory" in text


def test_a_missing_repo_is_one_paragraph(hub, tmp_path):
    proc = run_pull(hub_env(tmp_path, hub.url), "test-org/no-such-model")
    assert proc.returncode == 1
    text = _paragraph(proc.stderr)
    assert "test-org/no-such-model does not exist" in text and "HTTP 404" in text and "local directory" in text


def test_a_private_repo_needs_hf_token(hub, tmp_path):
    hub.add_dir("test-org/private", make_model_dir(tmp_path / "private"), private=True)
    proc = run_pull(hub_env(tmp_path, hub.url), "test-org/private")
    assert proc.returncode == 1
    text = _paragraph(proc.stderr)
    assert "private" in text and "HF_TOKEN" in text and "local directory" in text
    proc = run_pull(hub_env(tmp_path, hub.url, HF_TOKEN=hub.token), "test-org/private")
    assert proc.returncode == 0, proc.stderr
    assert (snapshot(tmp_path, hub, "test-org/private") / "model.safetensors").exists()


def test_pull_without_names_fetches_every_mlx_model_the_config_names(hub, tmp_path):
    hub.add_dir("test-org/other", make_model_dir(tmp_path / "other", context=131072))
    local = make_model_dir(tmp_path / "on-disk")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[log]\nrequests = ""\n[backends.m]\ntype = "mlx"\nmodel = "{REPO}"\n'
                   f'[backends.m.model_mapping]\n"claude-haiku-*" = "test-org/other"\n"claude-opus-*" = "{local}"\n')
    proc = run_pull(hub_env(tmp_path, hub.url), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tmp_path, hub).is_dir() and snapshot(tmp_path, hub, "test-org/other").is_dir()
    assert f"{local} is a local directory; nothing to pull" in proc.stderr
