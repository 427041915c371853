"""`sdlab serve --ray`: the studio app (create_app: the same API, pages and job kinds) behind Ray
Serve, as N model replicas (one per GPU, or CPU replicas) with autoscaling bounds.

Where the job records live: in one Ray actor, SharedJobStore, which holds the SQLite JobStore
of --state-dir on the node that ran `sdlab serve --ray` (pinned there, restarted there if it
dies). Every replica reaches it through its actor handle. SQLite on shared storage was the other
choice, refused: WAL mode needs shared memory that network filesystems do not give, and SQLite's
locks over NFS are unreliable. The actor serializes a few small calls per job, far below what
model replicas produce.

A replica claims a job with a lease that its heartbeat renews; a replica that dies stops renewing,
and after `lease_s` the job goes back to the queue and another replica runs it from the start:
an accepted job is never lost. Cancelling a running job reaches the replica running it through
the same heartbeat. Live step counts and previews are kept by the replica running the job (other
replicas report its state, not its step).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray
from ray import serve

from .jobs import JobQueue
from .settings import ServerSettings
from .shared_jobs import LEASE_S, RemoteJobStore, SharedJobStore

NAMESPACE = "sdlab"
STORE_NAME = "sdlab-job-store"
APP_NAME = "sdlab"


@serve.deployment(max_ongoing_requests=64)
@serve.ingress()
class Studio:
    """One replica: a model, a worker thread, and the studio app over the shared job store."""

    def __init__(self, settings: ServerSettings, lease_s: float = LEASE_S):
        self.settings = settings
        self.store = RemoteJobStore(ray.get_actor(STORE_NAME, namespace=NAMESPACE), lease_s)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.settings, job_queue=self._queue)

    def _queue(self, settings: ServerSettings, load_pipeline) -> JobQueue:
        queue = JobQueue(settings, self.store, load_pipeline)
        self.store.on_cancel = queue.cancel
        return queue


def deployment_options(replicas: int, min_replicas: Optional[int], max_replicas: Optional[int],
                       device: Optional[str], cpus: float) -> dict:
    """Serve options: `replicas` fixed, or autoscaling between min and max replicas; a GPU each
    on CUDA, else `cpus` CPUs each."""
    gpu = (device or "").startswith("cuda")
    options = {"ray_actor_options": {"num_cpus": 0 if gpu else cpus, "num_gpus": 1 if gpu else 0}}
    if min_replicas is None and max_replicas is None:
        options["num_replicas"] = replicas
    else:
        lo = replicas if min_replicas is None else min_replicas
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": max(lo, max_replicas or lo),
                                         "initial_replicas": max(lo, min(replicas, max_replicas or replicas)),
                                         "target_ongoing_requests": 4}
    return options


def start_store(settings: ServerSettings, lease_s: float = LEASE_S):
    """The SharedJobStore actor on this node (the one that exists, if any)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    settings.state_path.mkdir(parents=True, exist_ok=True)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(SharedJobStore).options(
        name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        num_cpus=0, scheduling_strategy=here).remote(str(settings.db_path), lease_s)
    ray.get(actor.counts.remote())      # up, and its database opened
    return actor


def connect(address: Optional[str], cpus_needed: float) -> bool:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS) or start a local one; True when
    this call started Ray."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, namespace=NAMESPACE)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(cpus_needed + 0.999)), include_dashboard=False, **quiet)
    return True


def deploy(settings: ServerSettings, replicas: int = 1, *, min_replicas=None, max_replicas=None,
           cpus: float = 1.0, lease_s: float = LEASE_S) -> None:
    """Start the job store and the Studio replicas on the Ray this process is connected to,
    serving http://settings.host:settings.port/; returns once every replica is up."""
    device = settings.devices[0]
    start_store(settings, lease_s)
    serve.start(http_options={"host": settings.host.strip("[]"), "port": settings.port})
    app = Studio.options(**deployment_options(replicas, min_replicas, max_replicas, device, cpus))
    serve.run(app.bind(settings, lease_s), name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    """Stop the replicas, the store actor and Serve."""
    serve.shutdown()
    try:
        ray.kill(ray.get_actor(STORE_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
