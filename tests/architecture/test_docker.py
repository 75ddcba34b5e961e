"""Static checks of the container set-up: docker/, docker-compose.yml, the env templates.

There is no Docker engine where the tests run, so images are never built here. What can be
checked without one is checked: every file a Dockerfile or compose file names exists (and gets
past .dockerignore), base images are pinned, images run as non-root with a HEALTHCHECK, the
commands are the console script's real subcommands and options, the broker Redis is durable and
never evicts, workers scale, and no secret is written down. When a `docker compose` (v2) CLI is
installed, `docker compose config` validates the files as well; without one the static checks stand.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
MAIN_COMPOSE = ROOT / "docker-compose.yml"
WORKER_HOST_COMPOSE = DOCKER / "compose.worker-host.yml"
# Each compose file with the env template that makes it complete.
COMPOSE_FILES = {MAIN_COMPOSE: ROOT / ".env.example", WORKER_HOST_COMPOSE: DOCKER / "worker-host.env.example"}
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
EXPECTED_DOCKERFILES = {"api.Dockerfile", "worker-cpu.Dockerfile", "worker-cuda.Dockerfile"}

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEYS?$|_KEY$|BASIC_AUTH|REDISCLI_AUTH")
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]*:([^@\s]+)@")
# A value taken from the environment with no literal fallback: ${X}, ${X:?msg}, ${X?msg}, ${X:-}.
FROM_ENV = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?\?[^}]*)|:?-)?\}$")
PLACEHOLDER = "change-me"


# -- helpers ---------------------------------------------------------------------------------


@cache
def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _services(path: Path) -> dict[str, dict]:
    return _compose(path)["services"]


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str | None) -> Stage:
        """The stage called ``name``, or the last one (the default build target) for None."""
        if name is None:
            return self.stages[-1]
        return next(s for s in self.stages if s.name == name)

    def lineage(self, name: str | None) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [self.stage(name)]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def effective(self, instruction: str, name: str | None) -> str | None:
        """The last ``instruction`` (USER, HEALTHCHECK, CMD) in effect for the stage ``name``."""
        for stage in self.lineage(name):
            values = [rest for instr, rest in stage.instructions if instr == instruction]
            if values:
                return values[-1]
        return None


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comment lines dropped."""
    out, buffer = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not buffer and not stripped):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        instruction, _, rest = buffer.partition(" ")
        out.append((instruction.upper(), rest.strip()))
        buffer = ""
    assert not buffer, f"{path.name}: dangling line continuation"
    return out


@cache
def _parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, rest in _instructions(path):
        if instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, words[0]))
        elif not stages:
            assert instruction == "ARG", f"{path.name}: {instruction} before the first FROM"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(path, global_args, stages)


def _exec_form(rest: str, where: str) -> list[str]:
    assert rest.startswith("["), f"{where}: use the exec (JSON) form, so signals reach the process"
    return json.loads(rest)


def _argv(command: list[str]) -> list[str]:
    """A command as words; ``sh -c "..."`` is split like the shell would (quotes, not expansions)."""
    if len(command) >= 3 and command[0] in ("sh", "/bin/sh", "bash") and command[1] == "-c":
        return shlex.split(command[2])
    return list(command)


def _gif_service_calls(argv: list[str]) -> list[tuple[str, list[str]]]:
    """(subcommand, --options) of every `gif-service` call in ``argv``."""
    calls = []
    for i, word in enumerate(argv):
        if word == "gif-service":
            assert i + 1 < len(argv), "gif-service without a subcommand"
            options = []
            for later in argv[i + 2 :]:
                if later in (";", "&&", "||") or later.endswith(";"):
                    break
                if later.startswith("--"):
                    options.append(later.split("=", 1)[0])
            calls.append((argv[i + 1], options))
    return calls


def _all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the compose files and Dockerfiles run."""
    commands = []
    for path in COMPOSE_FILES:
        for name, service in _services(path).items():
            if "command" in service:
                command = service["command"]
                command = command if isinstance(command, list) else shlex.split(command)
                commands.append((f"{path.name}:{name}", _argv(command)))
            test = service.get("healthcheck", {}).get("test")
            if isinstance(test, list) and test[0] == "CMD":
                commands.append((f"{path.name}:{name}:healthcheck", test[1:]))
    for path in DOCKERFILES:
        for stage in _parse_dockerfile(path).stages:
            for instruction, rest in stage.instructions:
                if instruction in ("CMD", "ENTRYPOINT"):
                    where = f"{path.name}:{stage.name}"
                    commands.append((where, _argv(_exec_form(rest, where))))
    return commands


def _typer_commands(cli: Path) -> dict[str, set[str]]:
    """Subcommand name -> its --options, read from the Typer app's source (no import)."""
    commands: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(cli.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if not (isinstance(target, ast.Attribute) and target.attr == "command"):
                continue
            name = node.name.replace("_", "-")
            if isinstance(decorator, ast.Call) and decorator.args:
                first = decorator.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    name = first.value
            options = set()
            for arg in node.args.args + node.args.kwonlyargs:
                options.add("--" + arg.arg.replace("_", "-"))
            for sub in ast.walk(node.args):
                if (
                    isinstance(sub, ast.Constant)
                    and isinstance(sub.value, str)
                    and sub.value.startswith("--")
                ):
                    options.add(sub.value.split("/")[0])
            commands[name] = options
    return commands


def _module_defines(module: str, attribute: str) -> bool:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        return False
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            return True
    return False


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``relative`` out (.dockerignore: last match wins, a pattern
    matching a parent folder matches everything inside it)."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.strip("/")
        candidates = [body, body[3:]] if body.startswith("**/") else [body]
        if any(
            fnmatch.fnmatchcase(p, c) or fnmatch.fnmatchcase(p, "*/" + c)
            for p in prefixes
            for c in candidates
        ):
            excluded = not negated
    return excluded


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def _redis_conf(path: Path) -> dict[str, str]:
    conf = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key.lower()] = value.strip()
    return conf


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(duration)):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short or long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            out.append((source, rest.split(":")[0]))
        else:
            out.append((str(volume.get("source", "")), volume["target"]))
    return out


def _worker_services(path: Path) -> dict[str, dict]:
    return {
        name: service
        for name, service in _services(path).items()
        if any(sub == "worker" for sub, _ in _gif_service_calls(_argv(service.get("command", []))))
    }


def _option(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def _host_of(url: str) -> str:
    return re.sub(r"^[a-z+]+://(?:[^@/]*@)?", "", url).split(":")[0].split("/")[0]


# -- the files exist and refer to files that exist ------------------------------------------------


def test_the_expected_files_are_there():
    assert EXPECTED_DOCKERFILES <= {p.name for p in DOCKERFILES}
    for path in [*COMPOSE_FILES, *COMPOSE_FILES.values(), ROOT / ".dockerignore"]:
        assert path.is_file(), path
    for conf in ("redis-broker.conf", "redis-cache.conf", "worker-healthcheck.py"):
        assert (DOCKER / conf).is_file(), conf


@pytest.mark.parametrize("compose", list(COMPOSE_FILES), ids=lambda p: p.name)
def test_builds_and_bind_mounts_refer_to_existing_files(compose):
    for name, service in _services(compose).items():
        assert "build" in service or "image" in service, name
        if "build" in service:
            build = service["build"]
            context = (compose.parent / build["context"]).resolve()
            assert context == ROOT, f"{name}: the build context must be the repository root"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            parsed = _parse_dockerfile(dockerfile)
            if "target" in build:
                assert build["target"] in {s.name for s in parsed.stages}, (
                    f"{name}: no stage {build['target']}"
                )
        for source, _target in _mounts(service):
            if source.startswith((".", "/")) and "$" not in source:
                assert (compose.parent / source).exists(), f"{name}: {source}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_get_past_dockerignore(dockerfile):
    patterns = _dockerignore_patterns()
    for stage in _parse_dockerfile(dockerfile).stages:
        for instruction, rest in stage.instructions:
            if instruction not in ("COPY", "ADD"):
                continue
            words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if any(w.startswith("--from") for w in words):
                continue
            assert instruction == "COPY", f"{dockerfile.name}: use COPY, not ADD"
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"{dockerfile.name}: COPY {rest}"
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{dockerfile.name}: COPY source {source} is not in the repository"
                assert not _dockerignored(source, patterns), (
                    f"{dockerfile.name}: {source} is in .dockerignore"
                )
                if path.is_dir():
                    for file in path.rglob("*.py"):
                        if "__pycache__" not in file.parts:
                            relative = file.relative_to(ROOT).as_posix()
                            assert not _dockerignored(relative, patterns), relative


def test_dockerignore_keeps_secrets_and_local_state_out():
    patterns = _dockerignore_patterns()
    for path in (
        ".env",
        "worker-host.env",
        ".venv/bin/python",
        ".git/config",
        "gif-data/gif.db",
        "tests/conftest.py",
        "gif/__pycache__/x.pyc",
        "gif_service.egg-info/PKG-INFO",
    ):
        assert _dockerignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "gif/__init__.py", "workers/celery_app.py"):
        assert not _dockerignored(path, patterns), path


def test_env_files_are_git_ignored_and_only_templates_are_tracked():
    lines = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in lines or "*.env" in lines
    for template in COMPOSE_FILES.values():
        assert not any(fnmatch.fnmatch(template.name, pattern) for pattern in lines), template


# -- images --------------------------------------------------------------------------------------


def _resolved_base(parsed: Dockerfile, stage: Stage) -> str:
    def substitute(match: re.Match) -> str:
        return parsed.global_args.get(match.group(1), "")

    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", substitute, stage.base)


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    parsed = _parse_dockerfile(dockerfile)
    names = {s.name for s in parsed.stages}
    for stage in parsed.stages:
        if stage.base in names:
            continue
        image = _resolved_base(parsed, stage)
        assert _pinned(image), f"{dockerfile.name}: FROM {stage.base} -> {image!r} has no pinned tag"


@pytest.mark.parametrize("compose", list(COMPOSE_FILES), ids=lambda p: p.name)
def test_compose_images_are_pinned(compose):
    for name, service in _services(compose).items():
        image = service.get("image", "")
        if "build" in service:
            # Our images: the tag comes from GIF_IMAGE_TAG, whose fallback must not be `latest`.
            assert "latest" not in image, f"{name}: {image}"
        else:
            assert "$" not in image and _pinned(image), f"{name}: {image}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_apt_installs_are_minimal_and_clean(dockerfile):
    for stage in _parse_dockerfile(dockerfile).stages:
        for instruction, rest in stage.instructions:
            if instruction == "RUN" and re.search(r"apt-get\s+install", rest):
                assert "--no-install-recommends" in rest, rest
                assert "rm -rf /var/lib/apt/lists" in rest, (
                    f"{dockerfile.name}: apt lists not cleaned: {rest}"
                )
            if instruction == "RUN" and "pip install" in rest:
                assert "--no-cache-dir" in rest, f"{dockerfile.name}: {rest}"


def _targets() -> list[tuple[Path, str | None]]:
    """Every (Dockerfile, target) an image is built from: compose targets plus each default."""
    targets = {(p, None) for p in DOCKERFILES}
    for compose in COMPOSE_FILES:
        for service in _services(compose).values():
            if "build" in service:
                build = service["build"]
                dockerfile = (compose.parent / build["context"] / build["dockerfile"]).resolve()
                targets.add((dockerfile, build.get("target")))
    return sorted(targets, key=lambda t: (t[0].name, t[1] or ""))


@pytest.mark.parametrize(
    "dockerfile,target", _targets(), ids=lambda v: v.name if isinstance(v, Path) else str(v)
)
def test_images_run_as_non_root_with_a_healthcheck_and_an_exec_form_command(dockerfile, target):
    parsed = _parse_dockerfile(dockerfile)
    user = parsed.effective("USER", target)
    assert user is not None, f"{dockerfile.name}:{target}: no USER (runs as root)"
    assert user.split(":")[0] not in ("root", "0"), f"{dockerfile.name}:{target}: USER {user}"
    healthcheck = parsed.effective("HEALTHCHECK", target)
    assert healthcheck and healthcheck.upper() != "NONE", f"{dockerfile.name}:{target}: no HEALTHCHECK"
    assert "CMD" in healthcheck
    command = parsed.effective("CMD", target)
    assert command, f"{dockerfile.name}:{target}: no CMD"
    _exec_form(command, f"{dockerfile.name}:{target}")
    env = " ".join(
        rest for stage in parsed.lineage(target) for instr, rest in stage.instructions if instr == "ENV"
    )
    assert "GIF_HOME=/data" in env, f"{dockerfile.name}:{target}: GIF_HOME is not the /data volume"


def test_cpu_images_get_a_cpu_torch_and_the_cuda_image_a_cuda_one():
    for name in ("api.Dockerfile", "worker-cpu.Dockerfile", "worker-cuda.Dockerfile"):
        text = (DOCKER / name).read_text()
        index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text)
        assert index, name
        wanted = "/whl/cu" if "cuda" in name else "/whl/cpu"
        assert wanted in index.group(1), f"{name}: {index.group(1)}"
        assert "torch==${TORCH_VERSION}" in text and "--index-url" in text, name


def test_images_share_one_non_root_uid():
    uids = set()
    for dockerfile in DOCKERFILES:
        for stage in _parse_dockerfile(dockerfile).stages:
            for instruction, rest in stage.instructions:
                if instruction == "RUN" and "useradd" in rest:
                    uids.add(re.search(r"--uid\s+(\d+)", rest).group(1))
                if instruction == "USER":
                    uids.add(rest.split(":")[0])
    assert len(uids) == 1 and uids != {"0"}, f"blobs are shared between images: one uid, not {uids}"


# -- commands ------------------------------------------------------------------------------------


def test_commands_are_subcommands_and_options_of_the_declared_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gif-service" in scripts, scripts
    module, _, attribute = scripts["gif-service"].partition(":")
    assert _module_defines(module, attribute), scripts["gif-service"]
    cli = _typer_commands(ROOT / (module.replace(".", "/") + ".py"))
    used = set()
    for where, argv in _all_commands():
        assert "gif_service" not in " ".join(argv) or "gif-service" in argv, where
        for subcommand, options in _gif_service_calls(argv):
            assert subcommand in cli, f"{where}: `gif-service {subcommand}` is not a command of {module}"
            unknown = set(options) - cli[subcommand]
            assert not unknown, f"{where}: gif-service {subcommand} has no option {sorted(unknown)}"
            used.add(subcommand)
    assert {"serve", "worker"} <= used, used


def test_celery_and_healthcheck_refer_to_the_celery_app():
    for where, argv in _all_commands():
        if (argv and argv[0] == "celery") or "celery" in argv:
            app = _option(argv, "-A") or _option(argv, "--app")
            assert app, f"{where}: celery without -A"
            module, _, attribute = app.partition(":")
            assert _module_defines(module, attribute or "app"), f"{where}: {app}"
    source = (DOCKER / "worker-healthcheck.py").read_text()
    assert "from workers.celery_app import app" in source
    assert _module_defines("workers.celery_app", "app")
    compile(source, "worker-healthcheck.py", "exec")


def test_the_api_serves_on_all_interfaces_of_the_container():
    api = _services(MAIN_COMPOSE)["api"]
    calls = _gif_service_calls(_argv(api["command"]))
    assert calls and calls[0][0] == "serve"
    assert _option(api["command"], "--host") == "0.0.0.0"
    port = _option(api["command"], "--port")
    assert any(str(p).endswith(f":{port}") for p in api["ports"]), api["ports"]


# -- compose semantics -----------------------------------------------------------------------------


def test_broker_redis_is_durable_and_never_evicts_and_the_cache_is_separate():
    services = _services(MAIN_COMPOSE)
    confs = {}
    for name, service in services.items():
        for source, target in _mounts(service):
            if source.endswith(".conf"):
                assert target in service["command"], f"{name}: the conf it mounts is not the one it runs"
                confs[Path(source).name] = name
    broker, cache = confs["redis-broker.conf"], confs["redis-cache.conf"]
    assert broker != cache, "the broker and the gradient cache must be separate Redis instances"

    conf = _redis_conf(DOCKER / "redis-broker.conf")
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert "maxmemory" in conf and int(conf.get("tcp-keepalive", "0")) > 0
    assert any(target == "/data" for _, target in _mounts(services[broker])), "the AOF needs a volume"

    conf = _redis_conf(DOCKER / "redis-cache.conf")
    assert conf["maxmemory-policy"] == "allkeys-lru"
    assert "maxmemory" in conf
    assert conf["appendonly"] == "no" and conf["save"] in ('""', "''")

    for name in ("api", *_worker_services(MAIN_COMPOSE)):
        env = _environment(services[name])
        assert _host_of(env["GIF_BROKER_URL"]) == broker, name
        assert _host_of(env["GIF_REDIS_URL"]) == cache, name
        assert env["GIF_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert _host_of(env["GIF_DATABASE_URL"]) == "postgres", name


@pytest.mark.parametrize("compose", list(COMPOSE_FILES), ids=lambda p: p.name)
def test_workers_scale_out_and_shut_down_softly(compose):
    workers = _worker_services(compose)
    assert "worker" in workers and "worker-gpu" in workers, sorted(workers)
    data_sources = set()
    for name, service in workers.items():
        assert "container_name" not in service, f"{name}: a container_name prevents --scale"
        assert "ports" not in service, f"{name}: fixed host ports prevent --scale"
        assert _seconds(service.get("stop_grace_period", "10s")) > 90, f"{name}: stop grace <= 90 s"
        assert _environment(service).get("REMAP_SIGTERM") == "SIGQUIT", name
        assert _option(service["command"], "--concurrency") == "1", name
        mounts = {target: source for source, target in _mounts(service)}
        assert "/data" in mounts, f"{name}: no shared blob store at GIF_HOME"
        assert _environment(service)["GIF_HOME"] == "/data", name
        data_sources.add(mounts["/data"])
    assert len(data_sources) == 1, f"workers must share one blob store: {data_sources}"
    if compose == MAIN_COMPOSE:
        api_mounts = {target: source for source, target in _mounts(_services(compose)["api"])}
        assert api_mounts.get("/data") in data_sources, "the API and the workers must share the blob store"


@pytest.mark.parametrize("compose", list(COMPOSE_FILES), ids=lambda p: p.name)
def test_gpu_worker_is_one_process_on_one_pinned_gpu(compose):
    gpu = _services(compose)["worker-gpu"]
    assert gpu.get("profiles") == ["gpu"]
    assert gpu["build"]["dockerfile"].endswith("worker-cuda.Dockerfile")
    queues = _option(gpu["command"], "--queues")
    assert queues and all(q.startswith("gpu.") for q in queues.split(",")), queues
    assert _environment(gpu).get("CUDA_VISIBLE_DEVICES"), "one GPU per worker: pin it"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    cpu = _services(compose)["worker"]
    assert cpu["build"]["dockerfile"].endswith("worker-cpu.Dockerfile")
    assert "cpu" in _option(cpu["command"], "--queues"), "validation needs a worker on the cpu queue"


def test_everything_waits_for_healthy_dependencies_and_has_a_healthcheck():
    services = _services(MAIN_COMPOSE)
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert dependency in services
    for name in ("api", *_worker_services(MAIN_COMPOSE)):
        assert {"postgres", "redis"} <= set(services[name]["depends_on"]), name
    assert any(target.startswith("/var/lib/postgresql") for _, target in _mounts(services["postgres"]))
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in _services(WORKER_HOST_COMPOSE):
        assert _services(WORKER_HOST_COMPOSE)[name].get("healthcheck", {}).get("test"), name


def test_flower_is_optional_and_behind_basic_auth():
    flower = _services(MAIN_COMPOSE)["flower"]
    assert flower.get("profiles") == ["monitoring"]
    assert _environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    for port in flower.get("ports", []):
        assert str(port).startswith("${FLOWER_BIND:-127.0.0.1}:"), port
    parsed = _parse_dockerfile(ROOT / flower["build"]["dockerfile"])
    command = " ".join(_exec_form(parsed.effective("CMD", flower["build"]["target"]), "flower"))
    assert 'test -n "$FLOWER_BASIC_AUTH"' in command and "exit" in command, "flower must refuse to run open"
    assert "flower==" in " ".join(rest for _, rest in parsed.stage("flower").instructions) or re.search(
        r"ARG FLOWER_VERSION=\d", parsed.path.read_text()
    )


def test_published_ports_default_to_loopback():
    for compose in COMPOSE_FILES:
        for name, service in _services(compose).items():
            for port in service.get("ports", []):
                assert re.match(r"^\$\{[A-Z_]+:-127\.0\.0\.1\}:", str(port)), f"{name}: {port}"


# -- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compose", list(COMPOSE_FILES), ids=lambda p: p.name)
def test_compose_files_hold_no_secret(compose):
    data = _compose(compose)
    for name, service in data["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and value:
                assert FROM_ENV.match(value), f"{name}: {key} must come from the environment, not {value!r}"
        command = service.get("command", [])
        for i, word in enumerate(command if isinstance(command, list) else []):
            if word in ("--requirepass", "--password", "--basic-auth") and i + 1 < len(command):
                assert FROM_ENV.match(command[i + 1]), f"{name}: {word} {command[i + 1]!r}"
    for text in _strings(data):
        for password in URL_CREDENTIALS.findall(text):
            assert FROM_ENV.match(password), f"{compose.name}: a password in a URL must be ${{VAR}}: {text}"


@pytest.mark.parametrize("compose,template", list(COMPOSE_FILES.items()), ids=lambda p: p.name)
def test_env_templates_hold_placeholders_only_and_cover_the_required_variables(compose, template):
    values = _env_file(template)
    for key, value in values.items():
        if SECRET_NAME.search(key):
            assert PLACEHOLDER in value, f"{template.name}: {key} must be a {PLACEHOLDER} placeholder"
        for password in URL_CREDENTIALS.findall(value):
            assert PLACEHOLDER in password, f"{template.name}: {key} carries a real-looking password"
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", compose.read_text()))
    assert required <= set(values), f"{template.name} lacks {sorted(required - set(values))}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_hold_no_secret(dockerfile):
    for stage in _parse_dockerfile(dockerfile).stages:
        for instruction, rest in stage.instructions:
            if instruction in ("ENV", "ARG"):
                for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]:
                    assert not SECRET_NAME.search(key), f"{dockerfile.name}: {instruction} {key}"


# -- docker compose itself, when installed ---------------------------------------------------------


def _compose_cli() -> list[str] | None:
    """`docker compose` or a standalone `docker-compose`, version 2 or later, if one runs here."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            result = subprocess.run(
                [*cli, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        major = re.search(r"version v?(\d+)\.", result.stdout)
        if result.returncode == 0 and major and int(major.group(1)) >= 2:  # v1 (Python) lacks the spec
            return cli
    return None


def test_docker_compose_config_accepts_the_files_when_the_cli_is_installed():
    """Adds `docker compose config` (no engine needed) where the CLI exists; static checks otherwise."""
    cli = _compose_cli()
    if cli is None:
        return
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    for compose, template in COMPOSE_FILES.items():
        argv = [
            *cli,
            "-f",
            str(compose),
            "--env-file",
            str(template),
            "--profile",
            "gpu",
            "--profile",
            "monitoring",
        ]
        result = subprocess.run(
            [*argv, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, f"{compose.name}: {result.stderr}"
        listed = subprocess.run(
            [*argv, "config", "--services"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert set(listed.stdout.split()) == set(_services(compose)), listed.stdout
        # Without the template, the required secrets make it fail rather than run with blanks.
        bare = subprocess.run(
            [*cli, "-f", str(compose), "--env-file", os.devnull, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert bare.returncode != 0 and "required variable" in bare.stderr, bare.stderr
