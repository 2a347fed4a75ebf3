"""Builds `llama-server` from the llama.cpp source vendored in the llama-cpp-python sdist, once per machine.

The build lands in a cache directory keyed by the sdist version (by default
~/.cache/claude-gateway/llama.cpp-<version>/, so fresh clones on the same machine reuse it; override with
$CLAUDE_GATEWAY_LLAMA_CPP_DIR). A lock file makes concurrent test runs wait for one build instead of
starting two. `python -m tests.real_servers.llamacpp_build` builds it ahead of a test run.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_ENV = "CLAUDE_GATEWAY_LLAMA_CPP_DIR"
# The server binary only: no tests/examples/other tools, no web UI download, no HTTPS (the tier is local).
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DGGML_NATIVE=ON",
    "-DGGML_BACKEND_DL=OFF",
)


class BuildUnavailable(Exception):
    """This machine cannot build llama-server (no compiler, no cmake, no registry); the message says which."""


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: the server binary and the source tree it came from (for convert scripts)."""

    server: Path
    source: Path


def cache_root() -> Path:
    """Where this version's source and build live."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "claude-gateway" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def _missing_tools() -> list[str]:
    need = {"cmake": "cmake", "C++ compiler": None}
    missing = [name for name, exe in need.items() if exe and shutil.which(exe) is None]
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        missing.append("C++ compiler (g++ or clang++)")
    return missing


def _pip_download(dest: Path, log) -> Path:
    """The sdist via pip (the venv's, a system pip, or uv's pip), never a binary wheel."""
    spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    args = ["download", "--no-deps", "--no-binary", ":all:", spec, "-d", str(dest)]
    candidates = [[sys.executable, "-m", "pip"]]
    if pip := shutil.which("pip") or shutil.which("pip3"):
        candidates.append([pip])
    if uvx := shutil.which("uvx"):
        candidates.append([uvx, "pip"])
    errors = []
    for argv in candidates:
        try:
            out = subprocess.run([*argv, *args], check=False, stdout=log, stderr=subprocess.STDOUT, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{argv[0]}: {e}")
            continue
        found = sorted(dest.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
        if out.returncode == 0 and found:
            return found[0]
        errors.append(f"{' '.join(argv)} exited {out.returncode}")
    raise BuildUnavailable(f"could not download the {spec} sdist: " + "; ".join(errors))


def _source(root: Path, log) -> Path:
    src = root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    sdist = _pip_download(root / "sdist", log)
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # refuses links and paths that leave the target
            tar.extractall(root / "src", filter="data")
        else:  # pragma: no cover - Pythons before the extraction filters
            tar.extractall(root / "src")  # a pinned sdist from PyPI
    if not (src / "CMakeLists.txt").exists():
        raise BuildUnavailable(f"{sdist.name} has no vendor/llama.cpp/CMakeLists.txt")
    return src


def ensure_llama_server(jobs: int = 2) -> LlamaCpp:
    """The cached llama-server, building it first if this machine has none (minutes, once)."""
    root = cache_root()
    server = root / "build" / "bin" / "llama-server"
    src = root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if server.exists() and (root / "built").exists():
        return LlamaCpp(server, src)
    if missing := _missing_tools():
        raise BuildUnavailable("cannot build llama-server: missing " + ", ".join(missing))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if server.exists() and (root / "built").exists():
            return LlamaCpp(server, src)
        with open(root / "build.log", "ab") as log:
            src = _source(root, log)
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            steps = [
                ["cmake", "-S", str(src), "-B", str(root / "build"), *gen, *CMAKE_OPTIONS],
                ["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(jobs)],
            ]
            for step in steps:
                if subprocess.run(step, check=False, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    tail = (root / "build.log").read_text(errors="replace")[-1500:]
                    raise BuildUnavailable(f"`{' '.join(step)}` failed; see {root / 'build.log'}:\n{tail}")
        (root / "built").write_text(LLAMA_CPP_PYTHON_VERSION + "\n")
    return LlamaCpp(server, src)


if __name__ == "__main__":
    built = ensure_llama_server(int(os.environ.get("JOBS", "2")))
    print(built.server)
