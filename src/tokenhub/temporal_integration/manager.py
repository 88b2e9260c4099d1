"""The Temporal client and the in-process worker: connected in the background, watched, reconnected.

A Temporal that is down at start-up or dies later never stops the gateway from serving: requests go the
direct way meanwhile, and when Temporal answers again it is used again, without a restart.
Measured on this machine (``shared/reference/temporal-measured.md`` §3): a closed port fails in
milliseconds, but a server lost after connect takes ~10 s to surface with the SDK's default retries,
so the client gets a short RetryConfig and its health is probed every second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from temporalio.client import Client
from temporalio.service import RetryConfig, RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tokenhub.temporal_integration.activities import Activities
from tokenhub.temporal_integration.types import DATA_CONVERTER
from tokenhub.temporal_integration.workflows import ChatWorkflow, OrchestrationWorkflow

log = structlog.get_logger(__name__)
MAX_ABANDONED = 10_000

# Two quick retries (15 ms, then 30 ms, +-20 %): a dead server surfaces in ~50 ms instead of the default's
# ~10 s, so the request it catches falls back with little delay (measured: 50/100/200 ms retries cost the
# first request after a kill ~256 ms). A blip shorter than that is still ridden out.
CLIENT_RETRY = RetryConfig(
    initial_interval_millis=15,
    multiplier=2.0,
    max_interval_millis=60,
    max_elapsed_time_millis=100,
    max_retries=2,
)


@dataclass(frozen=True)
class TemporalTarget:
    host: str
    namespace: str
    task_queue: str


class TemporalManager:
    """Owns the client and (when ``activities`` is given) a worker running in this process.

    ``on_status(connected, worker_running)`` is called whenever either changes.
    """

    def __init__(
        self,
        target: TemporalTarget,
        activities: Activities | None,
        *,
        health_interval_s: float = 1.0,
        reconnect_max_s: float = 10.0,
        on_status: Callable[[bool, bool], None] | None = None,
    ) -> None:
        self.target = target
        self._activities = activities
        self._health_interval = health_interval_s
        self._reconnect_max = reconnect_max_s
        self._on_status = on_status
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._connected = False
        # Workflows whose requests fell back to the direct path: terminated once Temporal answers again.
        self._abandoned: set[str] = set()

    @property
    def client(self) -> Client | None:
        """The client, while Temporal answers its health checks; None otherwise."""
        return self._client if self._connected else None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def worker_running(self) -> bool:
        return self._worker_task is not None and not self._worker_task.done()

    @property
    def eager(self) -> bool:
        """Eager start hands the first workflow task to a worker on the same client: ours, if running."""
        return self.worker_running

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="temporal-manager")

    async def aclose(self) -> None:
        """Stop watching, drain the worker (running activities finish), forget the client."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self._stop_worker()
        self._set_status(connected=False)
        self._client = None

    def interrupt(self, log_id: str) -> bool:
        """Stop request ``log_id``'s ChatActivity if this process's worker runs it."""
        return self._activities is not None and self._activities.interrupt(log_id)

    def abandon(self, workflow_id: str) -> None:
        """Stop ``workflow_id`` when Temporal next answers: its request was answered another way."""
        if len(self._abandoned) < MAX_ABANDONED:
            self._abandoned.add(workflow_id)

    async def _run(self) -> None:
        backoff = 0.25
        while True:
            if self._client is None:
                self._client = await self._connect()
            healthy = self._client is not None and await self._healthy(self._client)
            if healthy and self._client is not None:
                if self._activities is not None and not self.worker_running:
                    await self._start_worker(self._client, self._activities)
                await self._terminate_abandoned(self._client)
            self._set_status(connected=healthy)
            backoff = self._health_interval if healthy else min(self._reconnect_max, backoff * 2)
            await asyncio.sleep(backoff)

    async def _connect(self) -> Client | None:
        try:
            client = await Client.connect(
                self.target.host,
                namespace=self.target.namespace,
                data_converter=DATA_CONVERTER,
                retry_config=CLIENT_RETRY,
                connect_timeout=timedelta(seconds=2),
                identity="tokenhub",
            )
        except (RuntimeError, RPCError, OSError) as exc:
            log.info("temporal_unreachable", host=self.target.host, error=str(exc)[:200])
            return None
        log.info("temporal_connected", host=self.target.host, namespace=self.target.namespace)
        return client

    @staticmethod
    async def _healthy(client: Client) -> bool:
        try:
            return await client.service_client.check_health(timeout=timedelta(milliseconds=500))
        except (RPCError, RuntimeError, OSError):
            return False

    async def _terminate_abandoned(self, client: Client) -> None:
        for workflow_id in list(self._abandoned):
            try:
                await client.get_workflow_handle(workflow_id).terminate(
                    reason="its request fell back to the direct path", rpc_timeout=timedelta(seconds=1)
                )
            except RPCError as exc:
                if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                    return  # Temporal is not answering yet; try again on the next round
            self._abandoned.discard(workflow_id)
            log.warning("temporal_workflow_terminated", workflow_id=workflow_id, reason="abandoned")

    async def _start_worker(self, client: Client, acts: Activities) -> None:
        try:
            self._worker = Worker(
                client,
                task_queue=self.target.task_queue,
                workflows=[ChatWorkflow, OrchestrationWorkflow],
                activities=[acts.chat, acts.model_call, acts.rank, acts.log_result],
                graceful_shutdown_timeout=timedelta(seconds=10),
                # Outside the SDK's sandbox, which rebuilds the workflow module's world for every run.
                # Measured here, medians of five runs each way: 7.0 against 12.4 ms of the gateway's CPU a
                # workflow, 16.0 against 21.2 ms added at concurrency 1, 97 against 71 workflows/s at 16.
                # What the sandbox would catch in workflow code (a clock, randomness, I/O) the tests catch:
                # they replay real histories in it.
                workflow_runner=UnsandboxedWorkflowRunner(),
            )
        except (RuntimeError, RPCError) as exc:
            log.warning("temporal_worker_failed_to_start", error=str(exc)[:200])
            return
        self._worker_task = asyncio.create_task(self._run_worker(self._worker), name="temporal-worker")

    async def _run_worker(self, worker: Worker) -> None:
        try:
            await worker.run()
        except Exception:  # the worker died (a fatal poll error): the loop starts a new one
            log.exception("temporal_worker_stopped")
        finally:
            self._set_status(connected=self._connected)

    async def _stop_worker(self) -> None:
        if self._worker is not None and self.worker_running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker.shutdown(), timeout=15)
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        self._worker = None
        self._worker_task = None

    def _set_status(self, *, connected: bool) -> None:
        changed = connected != self._connected
        self._connected = connected
        if changed:
            log.warning("temporal_connection_changed", connected=connected)
        if self._on_status is not None:
            self._on_status(connected, self.worker_running)
