"""Reading the deployment files (Dockerfile, docker-compose.yml, deploy/kuberay/) the way
Docker and Kubernetes would, for tests/unit/test_deploy_files.py and
tests/e2e/test_container_command.py. A small reader, not a full one: it knows what our files
use (exec-form ENTRYPOINT/CMD/HEALTHCHECK, ``ENV name=value``, ``\\`` continuations)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tallyray.cluster.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"
CRONJOB = REPO / "deploy" / "kuberay" / "events-maintain.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

#: The environment variables that hold secrets (``Settings.SECRETS``).
SECRET_VARIABLES = {v for v, name in Settings.ENV.items() if name in Settings.SECRETS}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def runtime_stage() -> list[tuple[str, str]]:
    return stages(dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))[-1]


def the(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for k, rest in instructions if k == keyword]
    assert found, f"no {keyword}"
    return found[-1]  # the last one counts, as in Docker


def container_argv() -> list[str]:
    """What the container runs: ENTRYPOINT + CMD (both exec form)."""
    runtime = runtime_stage()
    return exec_form(the(runtime, "ENTRYPOINT")) + exec_form(the(runtime, "CMD"))


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def rayservice() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(RAYSERVICE.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1
    return dict(docs[0])


def cronjob() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(CRONJOB.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1
    return dict(docs[0])


def cronjob_container() -> dict[str, Any]:
    [container] = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def cronjob_argv() -> list[str]:
    """What the CronJob's container runs: the image's ENTRYPOINT with the container's
    ``args`` in place of the image's CMD (Kubernetes' rule; no ``command`` is set)."""
    container = cronjob_container()
    assert "command" not in container  # the image's entry point stays
    return exec_form(the(runtime_stage(), "ENTRYPOINT")) + list(container["args"])


def pod_specs() -> list[dict[str, Any]]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def tallyray_commands(text: str, markdown: bool = False) -> list[str]:
    """Every ``tallyray …`` command line in a text (comments, ``$(…)``, ``docker compose run
    --rm tallyray …``); in Markdown, only in code blocks and code spans."""
    if markdown:
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        text = "\n".join(blocks + spans)
    found = []
    for match in re.finditer(r"(?:^|[\s`(\"'$])tallyray ((?:[a-z][\w-]*)[^\n`)|\"'#]*)", text):
        found.append(match.group(1).strip())
    return found


def compose_environment(secrets: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """The environment `tallyray serve` gets in the compose file's container: the image's
    ``ENV`` and the service's ``environment``, with the container's paths (secrets under
    /run/secrets/, mounted files) replaced by the given host paths."""
    service = compose()["services"]["tallyray"]
    env = {
        **dockerfile_env(runtime_stage()),
        **{k: str(v) for k, v in service["environment"].items()},
    }
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        mounts.setdefault(target, REPO / source)
    for name, value in env.items():
        if value.startswith("/run/secrets/"):
            env[name] = secrets[value.removeprefix("/run/secrets/")]
        elif value in mounts:
            env[name] = str(mounts[value])
    return env
