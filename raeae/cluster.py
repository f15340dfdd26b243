"""Connecting to Ray: never hang on a dead address, and keep Ray's own chatter off the terminal.

``ray.init()`` with no address joins whatever cluster Ray's temp folder last recorded
(``/tmp/ray/ray_current_cluster``). When that cluster has been stopped the file stays behind, and
``ray.init()`` then retries the dead address for many minutes (measured: 14 min, then a traceback).
:func:`connect` decides the address itself, probes it, and either starts a local Ray or fails with
one line naming the address and the fix.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

PROBE_TIMEOUT_S = 5.0  # a live GCS accepts a TCP connection in milliseconds, even across a VPC


class RayConnectionError(RuntimeError):
    """The Ray address in use does not answer; the message names it and the fix."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (optionally ``ray://``) -> (host, port); None for anything else."""
    rest = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host or "127.0.0.1", int(port)


def answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at ``address`` (a Ray GCS ``host:port``)."""
    hp = _host_port(address)
    if hp is None:
        return False
    try:
        with socket.create_connection(hp, timeout=timeout):
            return True
    except OSError:
        return False


def recorded_address() -> str | None:
    """The address ``ray start`` last recorded in Ray's temp folder, if any."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address(None) or None
    except Exception:  # noqa: BLE001 - a private helper; without it we simply start a local Ray
        return None


def choose_address(env: str | None, recorded: str | None, alive=answers) -> tuple[str, str]:
    """(address for ``ray.init``, a note for the user or ""), from ``RAY_ADDRESS`` and the recorded
    address. Raises :class:`RayConnectionError` for a ``RAY_ADDRESS`` that cannot work."""
    env = (env or "").strip()
    if env == "local":
        return "local", ""
    if env.startswith(("http://", "https://")):
        raise RayConnectionError(
            f"RAY_ADDRESS={env} is a Jobs API address, for `ray job submit`; to run this command on "
            f"that cluster submit it as a job, or unset RAY_ADDRESS to run it on a local Ray")
    if env and env != "auto":
        if _host_port(env) is None:
            raise RayConnectionError(f"RAY_ADDRESS={env} is not a host:port address; unset it to run "
                                     f"on a local Ray")
        if not alive(env):
            raise RayConnectionError(
                f"RAY_ADDRESS={env}: no Ray cluster answers there; start it (`ray start --head`) or "
                f"unset RAY_ADDRESS to run on a local Ray")
        return env, ""
    if recorded and alive(recorded):
        return recorded, (f"joining the running Ray cluster at {recorded} (from `ray start`); "
                          f"set RAY_ADDRESS=local for a private local Ray")
    if recorded:
        return "local", f"ignoring the stopped Ray cluster recorded at {recorded}; starting a local Ray"
    if env == "auto":
        raise RayConnectionError("RAY_ADDRESS=auto but no running Ray cluster was found; start one "
                                 "(`ray start --head`) or unset RAY_ADDRESS to run on a local Ray")
    return "local", ""


class _ProgressLines(logging.Filter):
    """Keeps only Ray Data's "Total Progress: done/total" line, reworded in images, for logs and pipes,
    and only while a command has asked for progress (:func:`show_progress`): a restore, not training's
    data loading. Ray Data counts its blocks, and a restore's block is a unit of up to --batch-size
    files, so the images done are the units' share of the images (units are near equal in size)."""

    prefix: str | None = None
    images: int = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.prefix is None or not text.startswith("Total Progress:"):
            return False
        done = text.split(":", 1)[1].strip()
        if done.startswith("0/"):
            return False  # the first report comes before any work: nothing to say yet
        record.msg, record.args = f"{self.prefix}: {progress_text(done, self.images)}", ()
        return True


def progress_text(done: str, images: int) -> str:
    """Ray Data's ``"3/22 ..."`` (blocks done of all) as images: ``"~409/3000 images (3/22 units)"``."""
    try:
        finished, total = (int(x) for x in done.split()[0].split("/"))
    except ValueError:
        return done
    if not images or total <= 0:
        return f"{finished}/{total} units"
    share = images if finished >= total else round(images * finished / total)
    return f"{'' if finished >= total else '~'}{share}/{images} images ({finished}/{total} units)"


def show_progress(prefix: str | None, images: int = 0) -> None:
    """Plain progress lines (every 10 s, when stdout is not a terminal) start with ``prefix`` and count
    ``images``; None turns them off."""
    _ProgressLines.prefix, _ProgressLines.images = prefix, images


def quiet_ray_output(verbose: bool) -> None:
    """Ray's INFO lines, Train's per-report lines and Data's operator tables stay quiet unless
    ``verbose``. Ray Data keeps its progress bars on a terminal (tqdm) and one plain progress line
    every 10 s elsewhere."""
    if verbose:
        return
    # ERROR, not WARNING: a fresh local Ray warns that it generated an auth token, every time.
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    progress = logging.getLogger("ray.data._internal.progress.logging_progress")
    progress.setLevel(logging.INFO)
    progress.propagate = False
    if not any(isinstance(f, _ProgressLines) for h in progress.handlers for f in h.filters):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_ProgressLines())
        progress.addHandler(handler)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_operator_progress_bars = False  # one total bar, not one per stage
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - older/newer Ray Data without these knobs: just noisier
        pass


# Whether the Ray this process uses is a private local one that connect() started: its resources are
# this machine's, and nothing will ever add a node to it.
_private_local = False


def private_local() -> bool:
    """Whether this process runs on the private local Ray :func:`connect` started (no cluster to join)."""
    return _private_local


def alive_nodes() -> list[dict]:
    """Each alive node's resources now (``{"CPU": 8.0, "GPU": 1.0, "object_store_memory": ...}``)."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def capacity(bundle: dict[str, float], nodes: list[dict]) -> int:
    """How many ``bundle``s of resources (one worker or actor each; Ray never splits one across nodes)
    fit on ``nodes`` as they are now."""
    wanted = {k: v for k, v in bundle.items() if v > 0}
    if not wanted:
        return sys.maxsize
    # the epsilon: Ray's resources are floats, and 1.0 / 0.1 is 9.999999999999998
    return sum(min(int(node.get(k, 0.0) / v + 1e-9) for k, v in wanted.items()) for node in nodes)


def describe(nodes: list[dict]) -> str:
    cpus, gpus = (sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU"))
    return f"{len(nodes)} node(s): {cpus:g} CPUs, {gpus:g} GPUs"


def require(command: str, who: str, count: int, bundle: dict[str, float], nodes: list[dict], fix: str) -> None:
    """Fail fast when ``count`` bundles of resources (``who``: "--workers 3", "2 model actor(s)") cannot
    fit on the private local Ray, and say why a joined cluster waits.

    Ray waits for resources that are not there without a word. On the private local Ray of
    :func:`connect` they never come (measured: `raeae train --workers 3` on 2 CPUs printed its run line,
    then nothing until it was killed), so that is an error naming the ``fix`` (or --gpu, when no node
    has a GPU). A cluster that was joined may add nodes (an autoscaler: ``cluster.yaml``'s GPU workers
    start at zero), so there it is one line saying what the run waits for."""
    if capacity(bundle, nodes) >= count:
        return
    what = f"{who} x {bundle.get('CPU', 0.0):g} CPU" + (f" + {bundle['GPU']:g} GPU" if bundle.get("GPU") else "")
    if bundle.get("GPU") and not any(n.get("GPU", 0.0) for n in nodes):
        fix = "drop --gpu, or join a cluster with GPUs (RAY_ADDRESS)"
    if private_local():
        raise ValueError(f"{what} do not fit this machine's Ray ({describe(nodes)}); {fix}")
    print(f"{command}: note: {what} do not fit the cluster's nodes now ({describe(nodes)}); waiting for "
          f"its autoscaler to add nodes (a cluster without one never will: stop this run and {fix})",
          flush=True)


def connect(verbose: bool = False, **init_kwargs) -> None:
    """Start or join Ray once per process, quietly unless ``verbose`` (see the module docstring)."""
    global _private_local
    import ray

    quiet_ray_output(verbose)
    if ray.is_initialized():
        return
    address, note = choose_address(os.environ.get("RAY_ADDRESS"), recorded_address())
    if note:
        print(f"raeae: {note}")
    if address == "local":
        # A private local Ray lives as long as this command. Its dashboard costs start-up time (~1 s
        # measured) and would take port 8265 from a head the user starts for `ray job submit`;
        # --verbose keeps it, for looking inside a run.
        init_kwargs.setdefault("include_dashboard", verbose)
    try:
        ray.init(address=address, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR, **init_kwargs)
    except ConnectionError as exc:  # it answered choose_address's probe, then refused us: most often the token
        raise RayConnectionError(join_refused(address, os.environ.get("RAY_AUTH_MODE", ""), exc)) from None
    _private_local = address == "local"
    quiet_ray_output(verbose)  # ray.init configures Ray's loggers again


def join_refused(address: str, auth_mode: str, exc: Exception) -> str:
    """The one line for a cluster at ``address`` that answers but will not let this process join. Ray
    2.60's `ray start` heads require a token by default, and a client sends one only in token mode."""
    why = ("if it was started with `ray start`, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
           "~/.ray/auth_token)" if auth_mode.lower() != "token" else
           "check that RAY_AUTH_TOKEN (or ~/.ray/auth_token) holds that cluster's token")
    return f"cannot join the Ray cluster at {address} ({exc}); {why}"


def disconnect() -> None:
    """Leave Ray at the end of a command (stopping the local Ray it started), if this process used Ray.
    Ray would do the same at interpreter exit, but only after a fixed half-second pause for late log
    lines, which a command that has already printed its summary does not need."""
    global _private_local
    ray = sys.modules.get("ray")  # a command that never touched Ray does not pay its import here
    if ray is not None and ray.is_initialized():
        _stop_monitor_first()
        ray.shutdown()
    _private_local = False


def _stop_monitor_first() -> None:
    """Stop the autoscaler monitor of a local Ray this process started, before ``ray.shutdown``.

    ``ray.shutdown`` stops the local Ray's processes one kind at a time, the GCS before the monitor.
    The monitor's SIGTERM handler then tries to report its own exit to the GCS that is gone, and is
    killed only after a 1 s grace: measured, 1.02 s of shutdown's 1.34 s, on every command that used
    Ray (ray-project/ray#30672 fixed this order for ``ray stop``, not for ``ray.shutdown``). A local
    Ray started for one command has no autoscaling to wind down, so its monitor is simply killed
    first. The node object is Ray's private API: where it is missing or changed, shutdown is merely
    slower, so any surprise here is ignored."""
    try:
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.is_head():  # None or not head: joined a cluster, which stays up
            node.kill_monitor(check_alive=False)
    except Exception:  # noqa: BLE001 - an optimisation of Ray's shutdown, never a reason to fail
        pass
