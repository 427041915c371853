"""The job store that Ray Serve's replicas share (see sdlab.server.ray_serve): the SQLite
JobStore run as one Ray actor, with leases so that a job whose replica died is run again, and
the replica-side client that renews them."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from .store import JobStore

log = logging.getLogger("sdlab.server")
LEASE_S = 30.0


class SharedJobStore(JobStore):
    """JobStore with leases, run as one Ray actor for all replicas. A running job whose lease
    runs out (its replica stopped renewing it) is queued again; jobs found running when the store
    (re)starts get a fresh lease, so a live replica keeps its job and a dead one's is re-run."""

    def __init__(self, path, lease_s: float = LEASE_S):
        self.lease_s, self.leases, self.cancels = lease_s, {}, set()
        super().__init__(path)

    def _mark_interrupted(self) -> int:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state='running'").fetchall()
        self.leases = {r[0]: time.monotonic() + self.lease_s for r in rows}
        return 0

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, t in self.leases.items() if t < now]:
            del self.leases[job_id]
            with self._lock:
                self._db.execute("UPDATE jobs SET state='queued', started=NULL, error=NULL WHERE id=? AND "
                                 "state='running'", (job_id,))
            log.warning("job %s: its replica stopped; queued again", job_id)

    def claim(self) -> Optional[dict]:
        self._expire()
        job = super().claim()
        if job is not None:
            self.leases[job["id"]] = time.monotonic() + self.lease_s
        return job

    def heartbeat(self, job_ids: list[str]) -> list[str]:
        """Renew the leases of the jobs a replica runs; returns those cancelled by a request."""
        for job_id in job_ids:
            if job_id in self.leases:
                self.leases[job_id] = time.monotonic() + self.lease_s
        self._expire()
        return [j for j in job_ids if j in self.cancels]

    def finish(self, job_id: str, state: str, *, result=None, error=None, attempt: Optional[int] = None) -> None:
        """As JobStore.finish, unless the job was given to another replica meanwhile (`attempt`
        is not its current one): a replica too slow to renew its lease does not overwrite it."""
        current = self.get(job_id)
        if attempt is not None and (current is None or current["attempts"] != attempt or current["state"] != "running"):
            return
        self.leases.pop(job_id, None)
        self.cancels.discard(job_id)
        if state == "interrupted":      # its replica stopped (scaled down, shut down): another runs it
            with self._lock:
                self._db.execute("UPDATE jobs SET state='queued', started=NULL, error=NULL WHERE id=?", (job_id,))
            return
        super().finish(job_id, state, result=result, error=error)

    def cancel_queued(self, job_id: str) -> bool:
        if super().cancel_queued(job_id):
            return True
        if job_id in self.leases:       # running on some replica: its heartbeat hears of it
            self.cancels.add(job_id)
        return False


class RemoteJobStore:
    """What JobQueue needs of a store, over the SharedJobStore actor; a thread renews the
    leases of the jobs this replica runs every lease_s / 4 and passes cancel requests on."""

    def __init__(self, actor, lease_s: float = LEASE_S):
        self.actor, self.lease_s = actor, lease_s
        self.running: dict[str, int] = {}       # job id -> its attempt, while this replica runs it
        self.on_cancel = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sdlab-lease", daemon=True)
        self._thread.start()

    def _call(self, name: str, *args, **kwargs):
        import ray

        try:
            return ray.get(getattr(self.actor, name).remote(*args, **kwargs))
        except ray.exceptions.RayTaskError as err:     # the store's own error (QueueFull), as itself
            raise (err.cause if isinstance(err.cause, Exception) else err) from None

    def add(self, kind, params, max_queued=None):
        return self._call("add", kind, params, max_queued)

    def counts(self):
        return self._call("counts")

    def get(self, job_id):
        return self._call("get", job_id)

    def list(self, state=None, limit=50, offset=0):
        return self._call("list", state, limit, offset)

    def cancel_queued(self, job_id):
        return self._call("cancel_queued", job_id)

    def requeue(self, job_id, max_queued=None):
        return self._call("requeue", job_id, max_queued)

    def claim(self):
        job = self._call("claim")
        if job is not None:
            self.running[job["id"]] = job["attempts"]
        return job

    def finish(self, job_id, state, *, result=None, error=None):
        self._call("finish", job_id, state, result=result, error=error, attempt=self.running.get(job_id))
        self.running.pop(job_id, None)

    def close(self):
        self._stop.set()

    def _beat(self):
        while not self._stop.wait(self.lease_s / 4):
            try:
                for job_id in self._call("heartbeat", list(self.running)):
                    if self.on_cancel is not None:
                        self.on_cancel(job_id)
            except Exception:   # the store restarting: the next beat renews
                log.warning("job store heartbeat failed", exc_info=True)
