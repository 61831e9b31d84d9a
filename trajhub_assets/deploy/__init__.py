"""Cluster settings: what moves trajhub from one machine to a cluster, in two profiles.

Kubernetes (dagster-k8s): each run is a pod, its steps run in it.

- `dagster.yaml`: the Dagster instance (Postgres storage, K8sRunLauncher, run queue and
  pool limits, run monitoring), mounted as $DAGSTER_HOME/dagster.yaml in every Dagster pod.
- `project.cluster.yaml`: the trajhub project file for the cluster (remote Docker host,
  in-cluster proxy).
- `workspace.yaml`: where the webserver and the daemon find the code server.
- `Dockerfile`: the image of the code server, webserver, daemon and run pods.
- `k8s/`: Kubernetes manifests, applied with `kubectl apply -k trajhub_assets/deploy/k8s`.

Celery (dagster-celery), in `celery/`: each step of a run goes to a Celery worker over Redis.
- `celery/dagster.yaml`: the instance of every process (Postgres storage, paths per process).
- `celery/celery.yaml`: broker, backend and delivery settings, read by the code location
  (TRAJHUB_EXECUTOR=celery, definitions.py) and by each `dagster-celery worker start -y`.
- `celery/project.yaml`: the project file (tables on S3, one shared proxy, one Docker engine).
- `celery/worker.env.example`: the environment every worker and the launching machine have.

Asset code is the same as on one machine; only these settings differ. The code location
reads only celery/celery.yaml; test_cluster_settings.py and test_celery_cluster.py load the rest.
"""

from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parent
K8S_DIR = DEPLOY_DIR / "k8s"
CELERY_DIR = DEPLOY_DIR / "celery"
CELERY_SETTINGS = CELERY_DIR / "celery.yaml"
