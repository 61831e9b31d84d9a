"""The cluster settings in trajhub_assets/deploy/, loaded the way a cluster loads them.

- dagster.yaml: validated by Dagster's own instance loader, then opened as a DagsterInstance
  on a real Postgres started here, with a run stored and pool slots claimed and freed. The
  only change: the K8sRunLauncher reads a kubeconfig file instead of the in-cluster
  service account, which exists only inside a pod.
- project.cluster.yaml: validated by trajhub's ProjectConfig.
- The Kubernetes manifests: parsed, and every name, port, path, image and Secret they
  share with each other, dagster.yaml, the project file and proxy/Dockerfile agrees.
- The remote Docker host: a sandbox runs on an engine reached over ssh://, as the
  project file says, through a real sshd in front of this machine's dockerd.
"""

import copy
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dagster import DagsterInstance, materialize
from dagster._config import process_config
from dagster._config.field_utils import convert_potential_field
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import class_from_code_pointer
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from kubernetes.client import ApiClient

from trajhub_assets.config import DEFAULT_CONFIG, load_config
from trajhub_assets.deploy import CELERY_DIR, CELERY_SETTINGS, DEPLOY_DIR, K8S_DIR
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.sandbox import Limits, make_sandbox
from trajhub_assets.sandbox.images import DEMO_IMAGE
from trajhub_assets.tasks.assets import tasks

REPO = Path(__file__).resolve().parents[1]


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as kustomize's `envs:` reads them."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


KUSTOMIZATION = yaml.safe_load((DEPLOY_DIR / "kustomization.yaml").read_text())
RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in yaml_docs(DEPLOY_DIR / name)]
INSTANCE_YAML = yaml.safe_load((DEPLOY_DIR / "dagster.yaml").read_text())
LAUNCHER = INSTANCE_YAML["run_launcher"]["config"]
SETTINGS = env_file(K8S_DIR / "trajhub.env")
PROXY_DOCKERFILE = (REPO / "proxy" / "Dockerfile").read_text()
TRAJHUB_DOCKERFILE = (DEPLOY_DIR / "Dockerfile").read_text()


def resource(kind: str, name: str) -> dict:
    found = [d for d in RESOURCES if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in the manifests, found {len(found)}"
    return found[0]


def generated(kind: str) -> dict[str, dict]:
    """The ConfigMaps or Secrets kustomization.yaml generates, by name."""
    return {g["name"]: g for g in KUSTOMIZATION[f"{kind}Generator"]}


def secret_keys(name: str) -> set[str]:
    """The keys a generated Secret will hold, from its committed example."""
    keys = set()
    for env in generated("secret")[name].get("envs", []):
        example = DEPLOY_DIR / f"{env}.example"
        assert example.is_file(), f"Secret {name}: {env} has no committed example {example.name}"
        keys |= set(env_file(example))
    return keys


def pod_specs() -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in RESOURCES if d["kind"] == "Deployment"}


def dockerfile_env(text: str, name: str) -> str:
    return re.search(rf"\b{name}=(\S+)", text).group(1)


# -- dagster.yaml ----------------------------------------------------------------------


@pytest.fixture
def cluster_env(monkeypatch, postgres, tmp_path):
    """What trajhub.env and the Secrets put in a Dagster pod's environment, with this
    test's Postgres, a local store (test_store_s3.py covers object storage) and the demo
    project instead of the cluster's volumes."""
    for key, value in SETTINGS.items():
        monkeypatch.setenv(key, value)
    for key, value in postgres.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRAJHUB_TABLES_URI")
    monkeypatch.setenv("TRAJHUB_HOME", str(tmp_path / "trajhub"))
    monkeypatch.setenv("TRAJHUB_CONFIG", str(DEFAULT_CONFIG))


def test_dagster_yaml_passes_dagsters_instance_schema_and_each_class_takes_its_config(cluster_env):
    config, custom_class = dagster_instance_config(str(DEPLOY_DIR))
    assert custom_class is None and set(config["storage"]) == {"postgres"}
    for key, expected in (("run_launcher", K8sRunLauncher), ("run_coordinator", QueuedRunCoordinator)):
        entry = config[key]
        klass = class_from_code_pointer(entry["module"], entry["class"])
        assert klass is expected
        checked = process_config(convert_potential_field(klass.config_type()).config_type, entry["config"])
        assert checked.success, f"{key}: {checked.errors}"
    # env-sourced fields resolve from the pod's environment, never from the file
    launcher = process_config(
        convert_potential_field(K8sRunLauncher.config_type()).config_type, config["run_launcher"]["config"]
    ).value
    assert launcher["job_image"] == SETTINGS["TRAJHUB_IMAGE"]


def _kubeconfig(path: Path) -> Path:
    # A cluster that is never contacted: constructing the launcher reads config only.
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    return path


def test_dagster_yaml_opens_an_instance_on_postgres_that_stores_runs_and_pools(cluster_env, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shipped = copy.deepcopy(INSTANCE_YAML)
    shipped["run_launcher"]["config"] |= {
        "load_incluster_config": False,
        "kubeconfig_file": str(_kubeconfig(tmp_path / "kubeconfig")),
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(shipped))
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert (launcher.job_namespace, launcher.instance_config_map, launcher.job_image) == (
            "trajhub",
            "dagster-instance",
            SETTINGS["TRAJHUB_IMAGE"],
        )
        assert launcher.env_secrets == LAUNCHER["env_secrets"]
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config()
        assert queue.run_queue_config.max_concurrent_runs == 8
        assert queue.pool_config.default_pool_limit == 2
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0

        result = materialize(
            [tasks], resources={"store": StoreResource(), "project": ProjectResource()}, instance=instance
        )
        assert result.success

        # The run pod the launcher would create for that run, built by dagster-k8s itself.
        context = launcher.get_container_context_for_run(instance.get_run_by_id(result.run_id))
        job = construct_dagster_k8s_job(
            context.get_k8s_job_config(job_image=None, run_launcher=launcher),
            args=["dagster", "api", "execute_run"],
            job_name="dagster-run-test",
            user_defined_k8s_config=context.run_k8s_config,
            component="run_worker",
        )
        pod = job.spec.template.spec
        container = pod.containers[0]
        assert container.image == SETTINGS["TRAJHUB_IMAGE"]
        assert pod.service_account_name == "trajhub-run" and pod.security_context.fs_group == 1000
        assert {v.name for v in pod.volumes} >= {"trajhub-home", "trajhub-project", "docker-ssh"}
        assert {m.mount_path for m in container.volume_mounts} >= {
            SETTINGS["TRAJHUB_HOME"],
            SETTINGS["TRAJHUB_CONFIG"].rsplit("/", 1)[0],
        }
        assert [e.config_map_ref.name for e in container.env_from if e.config_map_ref] == ["trajhub-env"]
        assert {e.secret_ref.name for e in container.env_from if e.secret_ref} == set(LAUNCHER["env_secrets"])
        password = next(e for e in container.env if e.name == "DAGSTER_PG_PASSWORD")
        assert password.value_from.secret_key_ref.name == "dagster-postgresql-secret"

        # A step of a pool takes a slot at the default limit; a crashed run's slots are
        # freed the way run monitoring frees them.
        storage = instance.event_log_storage
        assert storage.supports_global_concurrency_limits
        storage.initialize_concurrency_limit_to_default("sandboxes")
        claim = storage.claim_concurrency_slot("sandboxes", result.run_id, "raw_trajectories")
        assert claim.is_claimed
        assert storage.get_concurrency_info("sandboxes").slot_count == 2
        assert storage.get_concurrency_info("sandboxes").active_slot_count == 1
        storage.free_concurrency_slots_for_run(result.run_id)
        assert storage.get_concurrency_info("sandboxes").active_slot_count == 0

    # A new instance from the same file finds the run and its materialization in Postgres.
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        assert instance.get_latest_materialization_event(tasks.key) is not None


def test_dagster_yaml_holds_no_secret_and_names_only_variables_pods_have():
    text = (DEPLOY_DIR / "dagster.yaml").read_text()
    variables = set(re.findall(r"\{env: (\w+)\}", text))
    assert variables == {
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_PORT",
        "DAGSTER_PG_DB",
        "DAGSTER_PG_USERNAME",
        "DAGSTER_PG_PASSWORD",
        "TRAJHUB_IMAGE",
    }
    assert "password: {env: DAGSTER_PG_PASSWORD}" in text
    # run pods get DAGSTER_PG_PASSWORD from postgres_password_secret, the rest from trajhub.env
    assert variables - {"DAGSTER_PG_PASSWORD"} <= set(SETTINGS)
    assert "postgresql-password" in secret_keys(LAUNCHER["postgres_password_secret"])
    # and so do the webserver, the daemon and the code server
    for name, spec in pod_specs().items():
        if name == "trajhub-proxy":
            continue
        container = spec["containers"][0]
        refs = {e["name"]: e["valueFrom"] for e in container.get("env", [])}
        assert refs["DAGSTER_PG_PASSWORD"]["secretKeyRef"] == {
            "name": LAUNCHER["postgres_password_secret"],
            "key": "postgresql-password",
        }, name
        assert {"configMapRef": {"name": "trajhub-env"}} in container["envFrom"], name


# -- project.cluster.yaml --------------------------------------------------------------


def test_project_cluster_yaml_is_a_valid_project_pointing_at_the_cluster():
    config = load_config(DEPLOY_DIR / "project.cluster.yaml")
    assert config.sandbox.backend == "docker"
    assert urlsplit(config.sandbox.docker_host).scheme == "ssh"
    # the calls that take no host (orphan clean-up, bridge address) use DOCKER_HOST
    assert SETTINGS["DOCKER_HOST"] == config.sandbox.docker_host
    url = urlsplit(config.proxy.url)
    service, namespace = url.hostname.split(".")[:2]
    proxy_service = resource("Service", service)
    assert namespace == KUSTOMIZATION["namespace"] == LAUNCHER["job_namespace"]
    assert url.port in [p["port"] for p in proxy_service["spec"]["ports"]]
    # the key runs send is in a Secret run pods get, and the proxy checks it
    key_secret = "trajhub-proxy-master-key"
    assert config.proxy.master_key_env in secret_keys(key_secret)
    assert key_secret in LAUNCHER["env_secrets"]
    assert {"secretRef": {"name": key_secret}} in pod_specs()["trajhub-proxy"]["containers"][0]["envFrom"]
    # the project file is where TRAJHUB_CONFIG says, in run pods and the code server
    config_dir, config_name = SETTINGS["TRAJHUB_CONFIG"].rsplit("/", 1)
    assert generated("configMap")["trajhub-project"]["files"] == [f"{config_name}=project.cluster.yaml"]
    assert {"name": "trajhub-project", "mountPath": config_dir, "readOnly": True} in LAUNCHER["volume_mounts"]


# -- Kubernetes manifests --------------------------------------------------------------


class _Response:
    """What the Kubernetes client's deserialize reads: a JSON body."""

    def __init__(self, doc):
        self.data = json.dumps(doc)


def _through_the_kubernetes_models(doc, model: str):
    # Unknown or misspelt fields are dropped on the way in, so they show as a difference.
    api = ApiClient()
    return api.sanitize_for_serialization(api.deserialize(_Response(doc), model))


@pytest.mark.parametrize("doc", RESOURCES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_a_valid_kubernetes_object(doc):
    assert _through_the_kubernetes_models(doc, f"V1{doc['kind']}") == doc


def test_run_pod_volumes_are_valid_kubernetes_objects():
    for volume in LAUNCHER["volumes"]:
        assert _through_the_kubernetes_models(volume, "V1Volume") == volume
    for mount in LAUNCHER["volume_mounts"]:
        assert _through_the_kubernetes_models(mount, "V1VolumeMount") == mount


def test_proxy_deployment_matches_proxy_dockerfile():
    build_tag = re.search(r"docker build -t (\S+) proxy/", PROXY_DOCKERFILE).group(1)
    exposed = int(re.search(r"^EXPOSE (\d+)", PROXY_DOCKERFILE, re.M).group(1))
    listens = int(re.search(r'"--port", "(\d+)"', PROXY_DOCKERFILE).group(1))
    uid = int(re.search(r"^USER (\d+)", PROXY_DOCKERFILE, re.M).group(1))
    recordings = dockerfile_env(PROXY_DOCKERFILE, "TRAJHUB_RECORDINGS_DIR")
    copied = re.search(r"^COPY (.+) \./$", PROXY_DOCKERFILE, re.M).group(1).split()
    assert {p.name for p in (REPO / "proxy").glob("*.py")} <= set(copied)  # every module start_proxy imports

    deployment = resource("Deployment", "trajhub-proxy")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == build_tag
    assert build_tag in [i["name"] for i in KUSTOMIZATION["images"]]
    assert exposed == listens == container["ports"][0]["containerPort"]
    assert spec["securityContext"]["runAsUser"] == uid
    # one recorder process, never two at once
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # it records to the shared volume where run pods read $TRAJHUB_HOME/recordings
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == recordings)
    claim = next(v for v in spec["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]
    run_mount = next(m for m in LAUNCHER["volume_mounts"] if m["mountPath"] == SETTINGS["TRAJHUB_HOME"])
    run_claim = next(v for v in LAUNCHER["volumes"] if v["name"] == run_mount["name"])["persistentVolumeClaim"]
    assert claim == run_claim and mount["subPath"] == "recordings"
    resource("PersistentVolumeClaim", claim["claimName"])
    # provider keys only here, and the same names as proxy/env.sh.example
    providers = secret_keys("trajhub-provider-keys")
    assert providers <= set(env_file(REPO / "proxy" / "env.sh.example"))
    assert "trajhub-provider-keys" not in LAUNCHER["env_secrets"]
    for service in ("trajhub-proxy", "trajhub-proxy-sandboxes"):
        ports = resource("Service", service)["spec"]["ports"]
        assert [(p["port"], p["targetPort"]) for p in ports] == [(exposed, container["ports"][0]["name"])]


def test_every_configmap_secret_claim_and_account_referenced_is_defined():
    configmaps, secrets = set(generated("configMap")), set(generated("secret"))
    claims = {d["metadata"]["name"] for d in RESOURCES if d["kind"] == "PersistentVolumeClaim"}
    accounts = {d["metadata"]["name"] for d in RESOURCES if d["kind"] == "ServiceAccount"}

    def check_volumes(volumes, where):
        for volume in volumes:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, where
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where

    for name, spec in pod_specs().items():
        check_volumes(spec.get("volumes", []), name)
        assert spec.get("serviceAccountName", "trajhub-run") in accounts | {"default"}, name
        for container in spec["containers"]:
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}, name
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] in (configmaps if "configMapRef" in source else secrets), name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["key"] in secret_keys(ref["secretKeyRef"]["name"]), name
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in SETTINGS, name
    check_volumes(LAUNCHER["volumes"], "run pods")
    assert LAUNCHER["service_account_name"] in accounts
    assert LAUNCHER["instance_config_map"] in configmaps
    assert set(LAUNCHER["env_config_maps"]) <= configmaps
    assert set(LAUNCHER["env_secrets"]) | {LAUNCHER["postgres_password_secret"]} <= secrets
    # the launcher's account may start and stop run Jobs; run pods' account needs nothing
    binding = resource("RoleBinding", "trajhub-run-launcher")
    role = resource("Role", binding["roleRef"]["name"])
    assert any("jobs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    assert [s["name"] for s in binding["subjects"]] == ["trajhub-dagster"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert pod_specs()[name]["serviceAccountName"] == "trajhub-dagster"


def test_run_pods_and_the_code_server_see_the_same_mounts_and_settings():
    code = pod_specs()["trajhub-code"]
    container = code["containers"][0]
    as_pairs = lambda mounts: {(m["name"], m["mountPath"]) for m in mounts}  # noqa: E731
    assert as_pairs(LAUNCHER["volume_mounts"]) <= as_pairs(container["volumeMounts"])
    code_secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    assert set(LAUNCHER["env_secrets"]) == code_secrets
    # the instance file sits at DAGSTER_HOME in every Dagster pod, as the launcher mounts it
    dagster_home = dockerfile_env(TRAJHUB_DOCKERFILE, "DAGSTER_HOME")
    assert LAUNCHER["dagster_home"] == dagster_home
    for name, spec in pod_specs().items():
        if name != "trajhub-proxy":
            assert {"name": "dagster-instance", "mountPath": dagster_home} in spec["containers"][0]["volumeMounts"]
    # ssh config for the Docker host lands in the image user's ~/.ssh
    ssh_dir = dockerfile_env(TRAJHUB_DOCKERFILE, "HOME") + "/.ssh"
    assert ("docker-ssh", ssh_dir) in as_pairs(LAUNCHER["volume_mounts"])
    identity = re.search(r"IdentityFile (\S+)", (K8S_DIR / "secrets/docker-ssh/config.example").read_text()).group(1)
    assert identity.rsplit("/", 1) == [ssh_dir, "id_ed25519"]
    assert f"k8s/secrets/docker-ssh/{identity.rsplit('/', 1)[1]}" in generated("secret")["trajhub-docker-ssh"]["files"]
    # run pods start from the image kustomize deploys
    image = next(i for i in KUSTOMIZATION["images"] if i["name"] == "trajhub")
    assert SETTINGS["TRAJHUB_IMAGE"] == f"{image['newName']}:{image['newTag']}"
    assert {c["image"] for n, s in pod_specs().items() if n != "trajhub-proxy" for c in s["containers"]} == {"trajhub"}


def test_webserver_and_daemon_find_the_code_server():
    workspace = yaml.safe_load((DEPLOY_DIR / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    service = resource("Service", server["host"])
    assert server["port"] in [p["port"] for p in service["spec"]["ports"]]
    args = pod_specs()["trajhub-code"]["containers"][0]["args"]
    assert args[args.index("-p") + 1] == str(server["port"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    assert server["location_name"] == args[args.index("--location-name") + 1] == pyproject["code_location_name"]
    assert args[args.index("-m") + 1] == pyproject["module_name"]
    assert generated("configMap")["dagster-workspace"]["files"] == ["workspace.yaml"]


def test_only_examples_of_secrets_are_committed():
    ignored = (K8S_DIR / "secrets" / ".gitignore").read_text().splitlines()
    assert "*.env" in ignored and "docker-ssh/*" in ignored
    for path in (K8S_DIR / "secrets").rglob("*"):
        if path.is_file() and path.name != ".gitignore":
            assert path.name.endswith(".example"), f"{path} looks like a filled-in secret"
            if path.name.endswith(".env.example"):
                assert not any(env_file(path).values()), f"{path} holds a value"


# -- the remote Docker host ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def docker_over_ssh(docker_engine, tmp_path, monkeypatch):
    """This machine's dockerd behind a real sshd on loopback: a "remote" Docker host.

    The client side is what the Secret `trajhub-docker-ssh` gives a run pod: ~/.ssh with
    a key, known_hosts and config. DOCKER_HOST points nowhere, so only the project's
    docker_host can reach an engine.
    """
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        pytest.fail("sshd is missing: scripts/test.sh installs openssh-server")
    keys = Path(tempfile.mkdtemp(prefix="trajhub-sshd-"))  # sshd wants its files in a private dir
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    port = _free_port()
    (keys / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {keys}/host_key",
                f"AuthorizedKeysFile {keys}/authorized_keys",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                f"PidFile {keys}/sshd.pid",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    log = keys / "sshd.log"
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(keys / "sshd_config")], stderr=log.open("w"))
    try:
        for _ in range(100):
            if "Server listening" in log.read_text() or server.poll() is not None:
                break
            time.sleep(0.05)
        assert server.poll() is None, f"sshd did not start: {log.read_text()}"
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh/config").write_text(f"Host 127.0.0.1\n  IdentityFile {keys}/client_key\n")
        algorithm, host_key = (keys / "host_key.pub").read_text().split()[:2]
        (home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{port} {algorithm} {host_key}\n")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")
        yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}", log
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(keys, ignore_errors=True)


def test_a_sandbox_runs_on_the_docker_host_the_project_names(docker_over_ssh):
    url, sshd_log = docker_over_ssh
    shipped = load_config(DEPLOY_DIR / "project.cluster.yaml").sandbox
    # the shipped host, with its address swapped for this test's sshd
    sandbox = shipped.model_copy(update={"docker_host": url})
    task = {"instance_id": "cluster-ssh", "image": DEMO_IMAGE, "workspace_abs_path": "/workspace"}
    limits = Limits(cpus=1, memory="512m", pids=sandbox.pids, run_timeout=120)
    with make_sandbox(
        task,
        backend=sandbox.backend,
        run_id="cluster-ssh-1",
        limits=limits,
        network=sandbox.network,
        docker_host=sandbox.docker_host,
    ) as box:
        box.write_file("/workspace/hello.py", b"print('hello from the remote engine')\n")
        result = box.exec("python3 hello.py", timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "hello from the remote engine")
    assert "Accepted publickey" in sshd_log.read_text()


# -- the Celery profile (deploy/celery/; run for real by test_celery_cluster.py) -----------


def test_celery_settings_load_as_the_workers_and_the_code_location_load_them(monkeypatch, postgres, tmp_path):
    from dagster_celery.cli import get_validated_config
    from dagster_celery.executor import CeleryExecutor

    from trajhub_assets.definitions import executor
    from trajhub_assets.errors import ConfigError

    example = env_file(CELERY_DIR / "worker.env.example")
    for key, value in example.items():
        monkeypatch.setenv(key, value)
    for key, value in postgres.items():
        monkeypatch.setenv(key, value)
    # A worker's `dagster-celery worker start -y celery.yaml`: the executor's own schema.
    worker = get_validated_config(str(CELERY_SETTINGS))
    assert (worker["broker"], worker["backend"]) == (
        example["TRAJHUB_CELERY_BROKER"],
        example["TRAJHUB_CELERY_BACKEND"],
    )
    assert worker["config_source"]["task_acks_late"] and worker["config_source"]["task_reject_on_worker_lost"]
    app = CeleryExecutor.for_cli(**{k: worker[k] for k in ("broker", "backend", "config_source")}).app_args()
    assert app["config_source"].broker_transport_options["visibility_timeout"] >= 1800  # > a batch of runs
    # The code location: TRAJHUB_EXECUTOR picks it, with the same file.
    assert executor().name == "celery"
    monkeypatch.setenv("TRAJHUB_EXECUTOR", "dask")
    with pytest.raises(ConfigError, match="TRAJHUB_EXECUTOR='dask'"):
        executor()
    monkeypatch.delenv("TRAJHUB_EXECUTOR")
    assert executor() is None
    # The instance every process opens: Postgres, with paths each process resolves itself.
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(CELERY_DIR / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        # what a worker gets with each step: the variable, resolved there, not this path
        artifacts = yaml.safe_load(instance.get_ref().local_artifact_storage_data.config_yaml)
        assert artifacts == {"base_dir": {"env": "DAGSTER_HOME"}}
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
    # The project file validates, with the tables' place left to the environment.
    config = load_config(CELERY_DIR / "project.yaml")
    assert config.sandbox.backend == "docker" and config.proxy.url and config.proxy.master_key_env in example
    assert config.release.replay_sample == 0  # a release stays in one worker's TRAJHUB_HOME
    assert example["TRAJHUB_TABLES_URI"].startswith("s3://")
