"""The deployment files (Dockerfile, docker-compose.yml, deploy/kuberay/) against the code
they start. No Docker daemon or Kubernetes runs here: these tests check what can be checked
without one — the files parse; every ``tallyray`` command and flag they (and
docs/deploy.md) use is one the CLI's own parser accepts; every ``TALLYRAY_*`` variable they
set is one the server reads, secrets only through files or Kubernetes Secrets; the Serve config
is one Ray accepts and names code that exists. tests/e2e/test_container_command.py runs the
container's command line itself."""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE,
    CRONJOB,
    DEPLOY_DOC,
    DOCKERFILE,
    RAYSERVICE,
    REPO,
    SECRET_VARIABLES,
    compose,
    container_argv,
    cronjob,
    cronjob_argv,
    cronjob_container,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    pod_specs,
    rayservice,
    runtime_stage,
    stages,
    tallyray_commands,
    the,
)

from tallyray.cli import build_parser
from tallyray.cluster.placement import shard_options
from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import SERVE_CONTROL_LOOP_SECONDS

# --- the Dockerfile ----------------------------------------------------------------------


def test_the_dockerfile_builds_the_wheel_in_one_stage_and_runs_it_in_another() -> None:
    all_stages = stages(dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))
    names = [the(s, "FROM").split()[-1] for s in all_stages]
    assert names == ["build", "runtime"]
    build, runtime = all_stages
    assert any(k == "RUN" and "pip wheel" in rest for k, rest in build)
    installs = [rest for k, rest in runtime if k == "RUN" and "pip install" in rest]
    # the runtime stage installs the build stage's wheels, offline, and copies no sources
    assert len(installs) == 1 and "from=build" in installs[0] and "--no-index" in installs[0]
    assert not [rest for k, rest in runtime if k in ("COPY", "ADD")]


def test_the_container_runs_as_a_user_that_is_not_root() -> None:
    user = the(runtime_stage(), "USER").split(":")[0]
    assert user not in ("root", "0", "")


def test_the_container_runs_tallyray_serve_as_the_cli_defines_it() -> None:
    argv = container_argv()
    assert argv == ["tallyray", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"


def test_the_healthcheck_asks_the_health_route_on_the_servers_port() -> None:
    healthcheck = the(runtime_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--start-period=" in options
    argv = exec_form(command)
    assert argv[0] == "python" and "/healthz" in argv[-1] and "TALLYRAY_PORT" in argv[-1]
    assert str(dockerfile_env(runtime_stage())["TALLYRAY_PORT"]) in the(runtime_stage(), "EXPOSE")


def test_the_image_sets_only_settings_the_server_reads_and_no_secret() -> None:
    env = dockerfile_env(runtime_stage())
    ours = {name for name in env if name.startswith("TALLYRAY_")}
    assert ours == {"TALLYRAY_HOST", "TALLYRAY_PORT"}
    assert ours <= set(Settings.ENV)
    assert env["TALLYRAY_HOST"] == "0.0.0.0"  # reachable from outside the container
    settings = Settings.load(**{Settings.ENV[n]: type_of(n)(env[n]) for n in ours})
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)


def type_of(variable: str) -> type:
    kind = {f: t for f, t in Settings.__annotations__.items()}[Settings.ENV[variable]]
    return int if kind == "int" else str


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_runs_tallyray_from_this_image_beside_postgres_15() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "tallyray"}
    db, app = services["postgres"], services["tallyray"]
    assert db["image"] == "postgres:15"
    assert db["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert [v.split(":")[1] for v in db["volumes"]] == ["/var/lib/postgresql/data"]
    assert db["volumes"][0].split(":")[0] in compose()["volumes"]
    assert app["build"] == "."
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "command" not in app and "entrypoint" not in app  # the image's `tallyray serve`
    assert app["shm_size"]  # Ray's object store


def test_compose_publishes_the_port_the_server_listens_on() -> None:
    app = compose()["services"]["tallyray"]
    port = dockerfile_env(runtime_stage())["TALLYRAY_PORT"]
    assert [p.split(":")[-1] for p in app["ports"]] == [port]
    assert "TALLYRAY_PORT" not in app["environment"]


def test_compose_hands_every_secret_over_as_a_file() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        env = service.get("environment", {})
        for variable, value in env.items():
            assert variable not in SECRET_VARIABLES, f"{name}: {variable} in plain environment"
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in service["secrets"] and secret in doc["secrets"], variable
    app_env = doc["services"]["tallyray"]["environment"]
    assert {"TALLYRAY_DATABASE_URL_FILE", "TALLYRAY_ADMIN_KEY_FILE"} <= set(app_env)


def test_compose_sets_only_settings_the_server_reads() -> None:
    for variable in compose()["services"]["tallyray"]["environment"]:
        assert variable in Settings.ENV or variable.removesuffix("_FILE") in SECRET_VARIABLES


def test_the_files_compose_mounts_exist() -> None:
    for volume in compose()["services"]["tallyray"]["volumes"]:
        source = volume.split(":")[0]
        assert (REPO / source).is_file(), source


# --- deploy/kuberay/rayservice.yaml ------------------------------------------------------

# The fields of ray.io/v1 used here, as KubeRay's API types define them
# (ray-operator/apis/ray/v1/rayservice_types.go and raycluster_types.go, KubeRay 1.3).
RAYSERVICE_SPEC = {
    "serveConfigV2",
    "rayClusterConfig",
    "serveService",
    "upgradeStrategy",
    "excludeHeadPodFromServeSvc",
}
RAYCLUSTER_SPEC = {
    "rayVersion",
    "headGroupSpec",
    "workerGroupSpecs",
    "gcsFaultToleranceOptions",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
}
GCS_FT = {"redisAddress", "redisPassword", "redisUsername", "externalStorageNamespace"}


def test_the_rayservice_uses_fields_of_the_ray_io_v1_crd() -> None:
    doc = rayservice()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    spec = doc["spec"]
    assert set(spec) <= RAYSERVICE_SPEC
    assert spec["upgradeStrategy"] == {"type": "None"}  # no second cluster on the database
    cluster = spec["rayClusterConfig"]
    assert set(cluster) <= RAYCLUSTER_SPEC
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert [set(g) <= WORKER_GROUP for g in cluster["workerGroupSpecs"]] == [True]
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in cluster["workerGroupSpecs"]
    ]:
        assert all(isinstance(v, str) for v in params.values())  # map[string]string


def test_the_head_is_fault_tolerant_with_an_external_redis_whose_password_is_a_secret() -> None:
    ft = rayservice()["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert set(ft) <= GCS_FT
    assert ft["redisAddress"]
    assert set(ft["redisPassword"]) == {"valueFrom"}
    assert set(ft["redisPassword"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}


def test_the_ray_version_is_the_one_tallyray_runs_on() -> None:
    import ray

    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_the_serve_config_is_one_ray_accepts_and_deploys_tallyrays_ingress() -> None:
    from ray.serve.schema import ServeDeploySchema

    from tallyray.cluster import rayservice as module
    from tallyray.cluster.deployment import Ingress

    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(config)
    [application] = schema.applications
    assert application.import_path == module.IMPORT_PATH
    path, _, name = module.IMPORT_PATH.partition(":")
    assert callable(getattr(importlib.import_module(path), name))
    assert [d.name for d in application.deployments] == [Ingress.name]


def test_every_pod_reads_the_settings_it_needs_and_its_secrets_from_kubernetes_secrets() -> None:
    for pod in pod_specs():
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"] if not e["name"].startswith("RAY_")}
        assert set(env) <= set(Settings.ENV)
        assert {"TALLYRAY_DATABASE_URL", "TALLYRAY_ADMIN_KEY", "TALLYRAY_SHARDS"} <= set(env)
        for name in SECRET_VARIABLES & set(env):
            assert "value" not in env[name]
            assert set(env[name]["valueFrom"]["secretKeyRef"]) == {"name", "key"}
        plain = {n: e["value"] for n, e in env.items() if "value" in e}
        settings = Settings.load(
            **{Settings.ENV[n]: type_of(n)(v) for n, v in plain.items() if n != "TALLYRAY_SHARDS"}
        )
        assert settings.host == "0.0.0.0"
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_the_pods_run_serve_s_controller_loop_as_tallyray_serve_does() -> None:
    for pod in pod_specs():
        [container] = pod["containers"]
        ray_env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("RAY_")}
        assert ray_env == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": SERVE_CONTROL_LOOP_SECONDS}


def test_the_service_exposes_the_port_the_api_listens_on() -> None:
    service = rayservice()["spec"]["serveService"]
    [port] = service["spec"]["ports"]
    for pod in pod_specs():
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert str(port["targetPort"]) == env["TALLYRAY_PORT"]
        assert port["targetPort"] in [p["containerPort"] for p in container["ports"]]


def test_as_many_api_replicas_as_worker_pods_one_each() -> None:
    spec = rayservice()["spec"]
    [deployment] = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["deployments"]
    [workers] = spec["rayClusterConfig"]["workerGroupSpecs"]
    assert deployment["max_replicas_per_node"] == 1
    assert deployment["num_replicas"] == workers["replicas"] == workers["maxReplicas"]
    # the head runs no replica, so it is kept out of the Service
    assert spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["excludeHeadPodFromServeSvc"] is True


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """The custom resources a group's ``rayStartParams`` offer: KubeRay puts the value into
    ``ray start --resources=<value>`` on a shell command line, which takes off the outer
    quotes and the backslashes, leaving JSON."""
    if "resources" not in params:
        return {}
    [argument] = shlex.split(params["resources"])
    return {name: float(n) for name, n in json.loads(argument).items()}


def test_the_shards_run_on_the_worker_pods_only_never_on_the_head() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    for pod in pod_specs():
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["TALLYRAY_SHARD_RESOURCE"] == "tallyray_shard"
        settings = Settings.load(shard_resource=env["TALLYRAY_SHARD_RESOURCE"])
        [(resource, share)] = shard_options(settings)["resources"].items()
    assert resource not in ray_start_resources(cluster["headGroupSpec"]["rayStartParams"])
    for group in cluster["workerGroupSpecs"]:
        offered = ray_start_resources(group["rayStartParams"])
        assert offered[resource] >= 4 * share  # the manifest's 4 shards fit on one pod


def test_the_shard_count_is_said_to_seed_the_first_start_only() -> None:
    for text in (COMPOSE.read_text(), RAYSERVICE.read_text()):
        assert "first start only" in text
        assert "tallyray reshard" in text


# --- deploy/kuberay/events-maintain.yaml -----------------------------------------------

# The fields of batch/v1 used here, as Kubernetes' API types define them (k8s.io/api
# batch/v1 CronJobSpec and JobSpec; `timeZone` is stable since Kubernetes 1.27).
CRONJOB_SPEC = {
    "schedule",
    "timeZone",
    "startingDeadlineSeconds",
    "concurrencyPolicy",
    "suspend",
    "jobTemplate",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
}
JOB_SPEC = {
    "parallelism",
    "completions",
    "activeDeadlineSeconds",
    "backoffLimit",
    "ttlSecondsAfterFinished",
    "template",
}


def test_the_cronjob_uses_fields_of_batch_v1_and_runs_one_round_at_a_time() -> None:
    doc = cronjob()
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert set(spec) <= CRONJOB_SPEC
    assert set(spec["jobTemplate"]["spec"]) <= JOB_SPEC
    assert spec["concurrencyPolicy"] == "Forbid"  # two rounds must not drop partitions at once
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    # a round ends well before the next one is due
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 3600


def test_the_cronjob_runs_every_hour_as_the_server_does() -> None:
    from tallyray.cluster.wiring import EVENT_LOG_MAINTENANCE_SECONDS

    minute, hour, day, month, weekday = cronjob()["spec"]["schedule"].split()
    assert 0 <= int(minute) < 60
    assert (hour, day, month, weekday) == ("*", "*", "*", "*")
    assert EVENT_LOG_MAINTENANCE_SECONDS == 3600


def test_the_cronjob_runs_tallyray_events_maintain_as_the_cli_defines_it() -> None:
    from tallyray import cli

    argv = cronjob_argv()
    assert argv == ["tallyray", "events", "maintain"]
    args = build_parser().parse_args(argv[1:])
    assert args.run is cli._events_maintain


def test_the_cronjob_runs_the_rayservices_image_as_its_user() -> None:
    images = {c["image"] for pod in pod_specs() for c in pod["containers"]}
    assert {cronjob_container()["image"]} == images
    pod = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [ray_pod_security] = {json_key(pod["securityContext"]) for pod in pod_specs()}
    assert json_key(pod["securityContext"]) == ray_pod_security
    assert pod["securityContext"]["runAsNonRoot"] is True


def json_key(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def test_the_cronjob_reads_the_database_of_the_rayservice_from_its_secret() -> None:
    env = {e["name"]: e for e in cronjob_container()["env"]}
    assert set(env) <= set(Settings.ENV)
    assert "TALLYRAY_DATABASE_URL" in env
    for name in SECRET_VARIABLES & set(env):
        assert "value" not in env[name]
    # every variable both set has the same value or the same Secret as the RayService's pods
    for pod in pod_specs():
        [container] = pod["containers"]
        ray_env = {e["name"]: e for e in container["env"]}
        for name in set(env) & set(ray_env):
            assert env[name] == ray_env[name], name


# --- every tallyray command the files and the page show ------------------------------------


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, RAYSERVICE, CRONJOB, DEPLOY_DOC], ids=str)
def test_every_tallyray_command_shown_is_one_the_cli_accepts(path: Path) -> None:
    parser = build_parser()
    for command in tallyray_commands(
        path.read_text(encoding="utf-8"), markdown=path.suffix == ".md"
    ):
        argv = [a for a in shlex.split(command) if not a.startswith("…")]
        try:
            parser.parse_args(argv)
        except SystemExit as error:
            raise AssertionError(f"{path.name}: `tallyray {command}` is refused") from error


def test_the_command_finder_finds_commands() -> None:
    text = 'run `tallyray migrate --database-url x`\n  "$(tallyray keys new-admin-key | jq)"'
    assert tallyray_commands(text) == ["migrate --database-url x", "keys new-admin-key"]
    page = "the tallyray image\n```\ndocker compose run --rm tallyray migrate\n```\n"
    assert tallyray_commands(page, markdown=True) == ["migrate"]
