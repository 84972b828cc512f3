"""The Docker executor: the `docker` SDK against the real engine, every blocking call in a worker thread.

A job's container is created with its limits, labels and the execution's `outputs/` mounted at /outputs,
attached before it starts (so no byte is missed), and its stdout and stderr are appended to the execution's
files as they arrive, each up to the node's --max-job-output (the rest is read and dropped). The container is
always removed: once the node has reported the run's end (release), so that the engine's work of removing it
(tens of ms of its CPU) is not spent while the job's result is published and reported, or after
REMOVE_UNRELEASED_AFTER if the node never lets it go (a requester that never answers); `cleanup_orphans`
removes what a crashed run left.

The box: every capability is dropped but JOB_CAPABILITIES, setuid binaries cannot gain privileges
(no-new-privileges), the processes are capped (--job-pids-limit), and CPU and memory are limited to what the
node counts the job as (its ask, or the node's default job size). Docker keeps no log of its own (log driver
"none"): a flood would otherwise fill /var/lib/docker however the files here are capped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from bacalhau.config import JobLimits
from bacalhau.errors import ExecutorError
from bacalhau.executors.output import CappedOutput, read_tail
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import Engine, Job, Network, RunResult
from bacalhau.models.resources import format_size
from bacalhau.storage.types import Mount

log = logging.getLogger(__name__)

LABEL_NODE = "bacalhau.node_id"
LABEL_EXECUTION = "bacalhau.execution_id"
LABEL_JOB = "bacalhau.job_id"
KILLED_EXIT_CODE = -1       # what a timed-out or cancelled run reports (its RunResult.error says which)
DEFAULT_CONCURRENT_CALLS = 16
READ_SIZE = 1024 * 1024
REMOVE_UNRELEASED_AFTER = 10.0  # seconds after its run ended: a container not released by then is removed (by
                                # _sweep, or the next run's start or end: at most this much is kept, whatever a peer does)
MAX_UNRELEASED = 64     # containers kept for release at most; past it the oldest goes at once (a requester that
                        # answers no run's end: a flood of short jobs kept each one's writable layer on the disk)
# What ordinary images need (chown/chmod of their files, dropping to a user, signalling their own children,
# a server on a low port). Left out of Docker's default set: MKNOD (device nodes: a block device node is a way
# to the host's disks), NET_RAW (forged packets), SYS_CHROOT, SETPCAP, SETFCAP, AUDIT_WRITE.
JOB_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE")


@dataclass
class _Run:
    job: Job
    exec_dir: ExecutionDir
    api: Any                    # the docker SDK's low-level APIClient
    container_id: str
    reader: threading.Thread
    why_killed: str = ""
    outputs: dict[str, CappedOutput] = field(default_factory=dict)     # stdout, stderr: what was kept, dropped
    read_error: BaseException | None = None
    started_at: float = field(default_factory=time.time)
    out_of_memory: str = ""     # the error saying so, when the kernel killed the job at its memory limit


def _docker_error(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0] if text else exc.__class__.__name__


class DockerExecutor:
    engine = Engine.DOCKER

    def __init__(self, node_id: str, *, client_factory: Any = None, limits: JobLimits | None = None) -> None:
        self.node_id = node_id
        self.limits = limits or JobLimits()
        self._client_factory = client_factory
        self._client: Any = None
        self._limiter = trio.CapacityLimiter(DEFAULT_CONCURRENT_CALLS)
        self._runs: dict[str, _Run] = {}
        self._ended: dict[str, tuple[Any, str, float]] = {}   # execution -> (api, container, ended at): to remove
        self._live: set[str] = set()        # from start() to the end of wait()
        self._released: set[str] = set()    # released while live (a cancel): removed as wait() ends
        self._sweeping = False              # a task removes what is not released in time (_sweep)

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kw), limiter=self._limiter)

    def _get_client(self) -> Any:
        if self._client is None:
            import docker

            self._client = (self._client_factory or docker.from_env)()
        return self._client

    async def is_installed(self) -> bool:
        try:
            client = await self._call(self._get_client)
            return bool(await self._call(client.ping))
        except Exception as exc:  # any failure here means: not usable on this node
            log.info("docker is not usable: %s", exc)
            return False

    async def cleanup_orphans(self) -> int:
        """Remove containers this node started in an earlier life (they carry its node id)."""
        client = await self._call(self._get_client)
        containers = await self._call(client.containers.list, all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"})
        for c in containers:
            if c.labels.get(LABEL_EXECUTION) not in self._runs:
                await self._call(c.remove, force=True)
        return len(containers)

    # -- the Executor protocol ------------------------------------------------------------------------------

    async def start(self, execution_id: str, job: Job, exec_dir: ExecutionDir, mounts: Sequence[Mount] = ()) -> None:
        self._remove_unreleased()
        self._live.add(execution_id)
        try:
            await trio.to_thread.run_sync(self._start_blocking, execution_id, job, exec_dir, mounts,
                                          limiter=self._limiter)
        except BaseException:
            self._live.discard(execution_id)    # no container left (_start_blocking removes one it made)
            self._released.discard(execution_id)
            raise

    def _create(self, client: Any, job: Job, execution_id: str, exec_dir: ExecutionDir, mounts: Sequence[Mount]) -> str:
        """The new container's id. Through the low-level API: `containers.create` inspects the container it
        made (one more request to the engine on every job's way) for a model this executor does not use."""
        import docker.errors
        from docker.types import LogConfig

        spec = job.spec.docker
        assert spec is not None
        size = self.limits.size(job.spec.resources)
        api = client.api
        binds = {str(exec_dir.outputs.resolve()): {"bind": "/outputs", "mode": "rw"},
                 **{str(m.host_dir.resolve()): {"bind": m.path, "mode": "ro"} for m in mounts}}
        host_config = api.create_host_config(
            binds=binds, network_mode="host" if job.spec.network == Network.HOST else "none",
            cap_drop=["ALL"], cap_add=list(JOB_CAPABILITIES), security_opt=["no-new-privileges"],
            pids_limit=self.limits.pids, log_config=LogConfig(type=LogConfig.types.NONE),
            nano_cpus=int(size.cpu * 1e9),
            mem_limit=size.memory, memswap_limit=size.memory,  # no swap beyond the limit: the limit is enforced
        )
        kwargs: dict[str, Any] = dict(
            image=spec.image, command=spec.parameters or None, entrypoint=spec.entrypoint,
            environment=spec.env, working_dir=spec.working_dir or None,
            labels={LABEL_NODE: self.node_id, LABEL_EXECUTION: execution_id, LABEL_JOB: job.id},
            volumes=[bind["bind"] for bind in binds.values()], detach=True, stdin_open=False, tty=False,
            host_config=host_config,
        )
        try:
            return str(api.create_container(**kwargs)["Id"])
        except docker.errors.ImageNotFound:
            pass
        try:
            client.images.pull(spec.image)
        except Exception as exc:
            raise ExecutorError(
                f"image {spec.image!r} is not available on this node and could not be pulled: {_docker_error(exc)}"
            ) from None
        return str(api.create_container(**kwargs)["Id"])

    def _start_blocking(self, execution_id: str, job: Job, exec_dir: ExecutionDir, mounts: Sequence[Mount]) -> None:
        import docker.errors
        import requests.exceptions

        if job.spec.network == Network.HOST and not self.limits.allow_host_network:
            # the bidder refuses such jobs first; this is the last gate
            raise ExecutorError("host networking is not allowed on this node (bacalhau serve --allow-host-network)")
        try:
            client = self._get_client()
            container_id = self._create(client, job, execution_id, exec_dir, mounts)
        except ExecutorError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ExecutorError(f"docker could not create the container: {_docker_error(exc)}") from None
        try:
            # attached before it starts, so "logs" (a replay of the log driver's, which is none) is not needed
            sock = client.api.attach_socket(container_id, params={"stdout": 1, "stderr": 1, "stream": 1})
            stream = _raw(sock)
            run = _Run(job, exec_dir, client.api, container_id, threading.Thread(target=lambda: None),
                       outputs={name: CappedOutput(name, self.limits.max_output) for name in ("stdout", "stderr")})
            run.reader = threading.Thread(target=self._pump, args=(run, stream), daemon=True,
                                          name=f"docker-logs-{execution_id[:8]}")
            run.reader.start()
            client.api.start(container_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            _remove(client.api, container_id)
            raise ExecutorError(f"docker could not start the container: {_docker_error(exc)}") from None
        self._runs[execution_id] = run

    @staticmethod
    def _pump(run: _Run, sock: Any) -> None:
        """Append the container's output to the execution's files as it arrives (a worker thread), each file
        up to the node's cap. What passes the cap is still read (a job blocked on a full pipe would hang to its
        timeout) and counted, not written.

        Docker multiplexes both streams on one socket in frames of an 8-byte header (stream, 0, 0, 0,
        big-endian u32 length) and the payload; large reads and our own demuxing keep this fast."""
        try:
            with open(run.exec_dir.stdout, "ab", buffering=0) as out, \
                    open(run.exec_dir.stderr, "ab", buffering=0) as err:
                files = {1: (out, run.outputs["stdout"]), 2: (err, run.outputs["stderr"])}
                buf = bytearray()
                while True:
                    chunk = sock.recv(READ_SIZE)
                    if not chunk:
                        break
                    buf += chunk
                    pos, pending = 0, {1: bytearray(), 2: bytearray()}
                    while len(buf) - pos >= 8:
                        kind, length = buf[pos], int.from_bytes(buf[pos + 4:pos + 8], "big")
                        if len(buf) - pos - 8 < length:
                            break
                        if kind in pending:
                            pending[kind] += buf[pos + 8:pos + 8 + length]
                        pos += 8 + length
                    del buf[:pos]
                    for kind, data in pending.items():
                        if data:
                            f, capped = files[kind]
                            capped.write(f, data)
        except BaseException as exc:  # reported by wait(): the output would be incomplete
            run.read_error = exc
        finally:
            sock.close()

    async def wait(self, execution_id: str) -> RunResult:
        import docker.errors
        import requests.exceptions

        run = self._runs[execution_id]
        ended = False
        try:
            result = await self._wait(run)
            ended = True
            return result
        except requests.exceptions.ConnectionError as exc:
            raise ExecutorError(f"the Docker engine went away while the job ran (stopped or restarted): "
                                f"{_docker_error(exc)}") from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ExecutorError(f"the Docker engine failed while the job ran: {_docker_error(exc)}") from None
        finally:
            # removed at release (a node that dies first removes the leftover at restart, by label)
            self._runs.pop(execution_id, None)
            self._live.discard(execution_id)
            self._remove_unreleased()
            self._ended[execution_id] = (run.api, run.container_id, time.monotonic())
            # a wait given up (the node shutting down, its task cancelled) leaves the container running, and
            # nothing may release it: removed now (killed), as one that failed (its outputs are on this host)
            if execution_id in self._released or not ended:
                self._released.discard(execution_id)
                self.release(execution_id)
            else:
                while len(self._ended) > MAX_UNRELEASED:
                    self.release(next(iter(self._ended)))
                self._sweep_later()

    def release(self, execution_id: str) -> None:
        """Remove the execution's container, in a thread of its own: nobody waits on it."""
        ended = self._ended.pop(execution_id, None)
        if ended is not None:
            threading.Thread(target=_remove, args=ended[:2], daemon=True, name=f"docker-rm-{execution_id[:8]}").start()
        elif execution_id in self._live:
            self._released.add(execution_id)

    def _sweep_later(self) -> None:
        """Have what is kept unreleased removed in time even if no run starts or ends after it (a requester
        that never answers the node's last run): one system task while any is kept, gone when the run ends."""
        if not self._sweeping:
            self._sweeping = True
            trio.lowlevel.spawn_system_task(self._sweep)

    async def _sweep(self) -> None:
        try:
            while self._ended:
                _, _, ended_at = next(iter(self._ended.values()))
                await trio.sleep(max(0.0, ended_at + REMOVE_UNRELEASED_AFTER - time.monotonic()))
                self._remove_unreleased()
        finally:
            self._sweeping = False

    def _remove_unreleased(self) -> None:
        too_old = time.monotonic() - REMOVE_UNRELEASED_AFTER
        while self._ended:
            execution_id, (_, _, ended_at) = next(iter(self._ended.items()))     # the oldest first
            if ended_at > too_old:
                return
            self.release(execution_id)

    async def _wait(self, run: _Run) -> RunResult:
        timeout = min(self.limits.max_timeout, run.job.spec.timeout)  # the bidder refuses more; NaN too
        with trio.move_on_after(timeout) as scope:
            status = await trio.to_thread.run_sync(run.api.wait, run.container_id, abandon_on_cancel=True)
        if scope.cancelled_caught:
            run.why_killed = run.why_killed or f"timed out after {timeout:g}s"
            await self._call(_kill, run.api, run.container_id)
            status = await self._call(run.api.wait, run.container_id)
        await trio.to_thread.run_sync(run.reader.join)
        exit_code = int(status.get("StatusCode", -1))
        error = run.why_killed
        if error:
            exit_code = KILLED_EXIT_CODE
        elif exit_code != 0:
            error = run.out_of_memory = await self._out_of_memory(run)
        if run.read_error is not None:
            raise ExecutorError(f"lost the container's output: {run.read_error}")
        if exit_code != 0 and not error:
            signal = await self._call(_killed_from_outside, run)
            if signal:
                raise ExecutorError(f"the container was killed from outside the job (signal {signal}): the "
                                    f"Docker engine stopped or restarted, or someone stopped it")
        noted = await self._note_limits(run)
        stdout_tail, stderr_tail = await trio.to_thread.run_sync(_settle, run.exec_dir, exit_code)
        out, err = run.outputs["stdout"], run.outputs["stderr"]
        return RunResult(exit_code=exit_code, error=error, stdout_bytes=out.kept, stderr_bytes=err.kept + noted,
                         stdout_tail=stdout_tail, stdout_truncated=out.truncated, stderr_truncated=err.truncated,
                         stderr_tail=stderr_tail)

    async def _out_of_memory(self, run: _Run) -> str:
        """The job's error if the kernel killed it at its memory limit (it failed on its own otherwise)."""
        state = (await self._call(run.api.inspect_container, run.container_id))["State"]
        if not state.get("OOMKilled"):
            return ""
        memory = self.limits.size(run.job.spec.resources).memory
        return f"out of memory: killed at its limit of {memory} bytes ({format_size(memory)}); ask for more with --memory"

    async def _note_limits(self, run: _Run) -> int:
        """Tell the job, at the end of its stderr, which of the node's limits it met; the bytes added (counted
        in its stderr_bytes: a client reads no stderr the result says is empty)."""
        notes = [note for note in (out.note() for out in run.outputs.values()) if note]
        if run.out_of_memory:
            notes.append(f"bacalhau: the container was killed: {run.out_of_memory}")
        if not notes:
            return 0
        data = "".join(f"\n{note}\n" for note in notes).encode()
        await trio.to_thread.run_sync(_append, run.exec_dir.stderr, data)
        log.info("job %s: %s", run.job.id, "; ".join(notes))
        return len(data)

    async def cancel(self, execution_id: str) -> None:
        run = self._runs.get(execution_id)
        if run is not None:
            run.why_killed = "cancelled"
            await self._call(_kill, run.api, run.container_id)


def _killed_from_outside(run: _Run) -> str:
    """The signal of a kill this executor did not send (the engine stopping its containers, `docker stop`), if
    the container got one; "" if not."""
    events = run.api.events(since=int(run.started_at) - 1, until=f"{time.time():.6f}", decode=True,
                            filters={"container": run.container_id, "event": "kill"})
    signals = [e.get("Actor", {}).get("Attributes", {}).get("signal", "?") for e in events]
    return signals[0] if signals else ""


def _raw(sock: Any) -> Any:
    """The plain socket under docker-py's attach socket (a SocketIO on Unix sockets)."""
    return getattr(sock, "_sock", sock)


def _kill(api: Any, container_id: str) -> None:
    try:
        api.kill(container_id)
    except Exception as exc:  # already gone or stopped: nothing to kill
        log.debug("kill %s: %s", container_id[:12], exc)


def _remove(api: Any, container_id: str) -> None:
    try:
        api.remove_container(container_id, force=True)
    except Exception as exc:  # already removed
        log.debug("remove %s: %s", container_id[:12], exc)


def _append(path: Any, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _settle(exec_dir: ExecutionDir, exit_code: int) -> tuple[str, str]:
    """Write the exit code down and read the tails of stdout and stderr: one trip to a worker thread, not
    three, on the way from the container's exit to the job's result."""
    exec_dir.exit_code.write_text(str(exit_code))
    return read_tail(exec_dir.stdout), read_tail(exec_dir.stderr)


