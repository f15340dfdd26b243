"""Restoring whole collections with Ray Data, in stages (see :mod:`raeae.stages`):
list -> read + decode -> model (actor pool, tiles of many images per forward pass) -> PNG encode
-> Parquet. With GPUs decode and encode are CPU tasks of their own; on CPU-only clusters all three run
in each model actor's call (:func:`plan_stages` says why).

The work list is the file listing, sorted largest first (longest-processing-time-first scheduling)
and cut into small blocks, so a few huge images cannot pile up at the end. Each file becomes exactly
one row; a file that cannot be read, decoded or restored becomes an ``error`` row with the reason,
and the job goes on.
"""

from __future__ import annotations

import enum
import json
import math
import posixpath
import time
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.fs as pafs

from raeae import checkpoint as ckpt
from raeae.cliutil import require_settings
from raeae.cluster import alive_nodes, connect, private_local, require, show_progress
from raeae.contract import SCHEMA, SUMMARY_FILE, parquet_files, summarise
from raeae.damage import DamageRequest
from raeae.images import DEFAULT_MAX_PIXELS
from raeae.report import REPORT_FILE, restore_report, write_quietly
from raeae.settings import TILE_BATCH, Blend, Layout, Precision
from raeae.stages import FusedStage, ModelStage, decode_batch, encode_batch
from raeae.storage import StorageConfig, StorageError, explain, list_files, resolve, skipped_note, write_bytes

LISTING = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64())])


@dataclass(frozen=True)
class RestoreConfig:
    """Restore every image under an input prefix into Parquet, with a summary."""

    model: str = field(default=ckpt.AUTO, metadata={
        "help": "builtin:auto (per image, the bundled model made for it: gray images to builtin:gray, "
                "colour ones to builtin:color, JPEG-damaged ones to the JPEG model that learnt the narrowest "
                "range of qualities holding theirs), builtin:NAME, or a checkpoint folder or model.pt (local or s3://) from "
                "`raeae train --output`; `raeae info --model M` says what a model is"})
    input: str = field(default="", metadata={"help": "folder or prefix of images (local, s3://, gs://...), "
                                                     "searched recursively"})
    output: str = field(default="", metadata={"help": "folder or prefix that receives the Parquet files and "
                                                      "_summary.json; must be empty"})
    storage: StorageConfig = StorageConfig()
    actors: int = field(default=0, metadata={"help": "model actors (0 = one single-threaded actor per CPU, "
                                                     "or one per GPU with --gpu)"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per model actor (bfloat16 autocast there)"})
    layout: Layout = field(default=Layout.AUTO, metadata={
        "help": "where the stages run: fused = decode, model and encode in each model actor (one "
                "single-threaded actor per CPU); staged = decode and encode in CPU tasks beside the "
                "model actors; auto = fused on CPUs (measured faster there: the stages compete for the "
                "same cores), staged with --gpu (the GPU never waits for the CPU work)"})
    cpus_per_actor: float = field(default=0.0, metadata={
        "help": "CPUs reserved per model actor (0 = half of its share of the CPUs, so the CPU tasks - the "
                "Parquet writes, and decode/encode when staged - always fit beside the actors)"})
    batch_size: int = field(default=256, metadata={
        "help": "at most this many images per unit of work (a decode task, a model call, an encode task; "
                "also at most ~4 MB of files, less toward the end of the list so the actors finish "
                "together); a model call packs their tiles into shared forward passes "
                "(a 64x64 image alone is ~100 tiles, too few for an efficient matrix multiply)"})
    tile_batch: int = field(default=TILE_BATCH, metadata={
        "help": "rows of the network per forward pass (a tile is one row; three for the colour model, "
                "one per plane); 4096 rows of its 1024-wide layers are 16 MB, memory the actors reuse "
                "from pass to pass (4096 colour tiles were 12,288 rows, 48 MB a layer, fresh pages "
                "every pass)"})
    stride: int = field(default=0, metadata={"help": "tile stride (0 = the checkpoint's recommendation, "
                                                     "else patch/2); smaller = more overlap, a little better "
                                                     "and quadratically slower (bench/RESULTS.md)"})
    blend: Blend = field(default=Blend.GAUSSIAN, metadata={
        "help": "how overlapping tiles are averaged: gaussian weights each tile's centre more, where the "
                "model saw the most context; flat weights every tile pixel the same"})
    precision: Precision = field(default=Precision.AUTO, metadata={
        "help": "number format of the model's matrix multiplies: auto = bf16 where the hardware has it "
                "natively (GPUs, CPUs with AVX512-BF16/AMX), else fp32"})
    ensemble: bool = field(default=False, metadata={
        "help": "restore each image in its 8 flips/rotations and average them (a little better, 8x the "
                "work; JPEG-damaged images in their 4 flips, each tiled on its own grid: 4x)"})
    noise_level: float = field(default=0.0, metadata={
        "help": "for models trained with --noise-input: the noise σ (0-255) they are told for every image; "
                "0 = each image's own estimate. Higher smooths more, lower keeps more detail"})
    damage: str = field(default="auto", metadata={
        "help": "what damage to restore: auto = decided per image from what it shows (impulses, JPEG "
                "artefacts with or without noise, noise; the rows say what was found); or one kind for "
                "the whole run: jpeg[:QUALITY], gaussian[:SIGMA], impulse, none (written back unchanged)"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "refuse images with more pixels than this, from the header (decompression bombs)"})
    file_mb: float = field(default=0.0, metadata={
        "help": "restored rows are gathered into Parquet files of at least this many MB (in memory) "
                "before a write: few large files instead of one per block, and the write buffer is "
                "bounded by this, not by the collection. 0 = 128 MB, or a quarter of a smaller "
                "collection's bytes, so the first write starts while the model actors still work"})
    copy_metadata: bool = field(default=True, metadata={
        "help": "copy each source's colour profile (ICC), EXIF block (orientation, date, camera) and "
                "resolution (DPI) into its restored PNG, so it displays and prints as the source did; "
                "--no-copy-metadata leaves them out (EXIF can hold where a photograph was taken)"})
    png_level: int = field(default=1, metadata={"help": "PNG compression level 0-9; 1 is ~4x faster to "
                                                        "encode than 6 for ~10 %% larger files"})

    def __post_init__(self) -> None:
        checks = [(self.actors >= 0, f"actors must be >= 0, got {self.actors}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.tile_batch >= 1, f"tile_batch must be >= 1, got {self.tile_batch}"),
                  (self.stride >= 0, f"stride must be >= 0, got {self.stride}"),
                  (self.noise_level >= 0, f"noise_level must be >= 0, got {self.noise_level}"),
                  (self.max_pixels >= 1, f"max_pixels must be >= 1, got {self.max_pixels}"),
                  (self.file_mb >= 0, f"file_mb must be >= 0, got {self.file_mb}"),
                  (0 <= self.png_level <= 9, f"png_level must be in 0..9, got {self.png_level}"),
                  (self.cpus_per_actor >= 0, f"cpus_per_actor must be >= 0, got {self.cpus_per_actor}")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        DamageRequest.parse(self.damage)  # a bad --damage fails here, with one line


@dataclass(frozen=True)
class Plan:
    """How the stages are laid out on the cluster."""

    actors: int  # model actors
    actor_cpus: float  # CPUs reserved per model actor
    actor_gpus: float
    threads: int  # torch threads per model actor
    task_cpus: float  # CPUs reserved per decode / encode / write task
    fused: bool  # decode and encode run inside the model actors' calls (Layout.FUSED)


def wanted_actors(cfg: RestoreConfig, nodes: list[dict], can_grow: bool = False) -> int:
    """Model actors for a collection with work for all of them: --actors, else one per GPU with --gpu,
    else one per CPU (see :func:`plan_stages`). With --gpu and no GPU on the ``nodes``: an error before
    any work is planned, unless the cluster ``can_grow`` (a joined cluster, whose autoscaler may add GPU
    nodes: ``cluster.yaml``'s start at zero and stop when idle, so a nightly run usually finds none);
    then --actors, or one, and Ray Data's request for their GPUs brings the nodes."""
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    if cfg.gpu and gpus < 1:
        if not can_grow:
            raise ValueError("--gpu was given but the Ray cluster has no GPUs")
        return cfg.actors or 1
    if cfg.actors:
        return cfg.actors
    return max(1, int(gpus if cfg.gpu else sum(n.get("CPU", 0.0) for n in nodes)))


def plan_stages(cfg: RestoreConfig, nodes: list[dict], batches: int, can_grow: bool = False) -> Plan:
    """The stage layout from the config and the cluster (``nodes``: each alive node's resources).

    On CPUs, by default, the stages are fused: one single-threaded actor per CPU decodes, restores and
    encodes each unit of files itself. Measured on 2 CPUs (bench/restore.py --setups
    plain,raeae,staged, 2 interleaved repeats, medians; staged with one 1-thread actor per CPU ->
    fused): 20,000 small images 51.7 -> 45.5 s, the 3,000-file mix 25.4 -> 23.3 s, 96 images of
    512-1024 px 60.5 -> 54.7 s. Staged, a decode or encode task that takes a core stalls the matrix
    multiply running there; fused, every core does a whole unit's work in turn. One thread per actor,
    not one actor with all the cores: a 2-thread forward pass is only 1.86x one thread, and tiling,
    stitching, decoding and encoding run on one thread (32 large images: two 1-thread processes
    15.8 s, one 2-thread process 16.3 s). On 2 AMD EPYC cores (fp32, AVX2) the gap is wider: the gray
    model's forward pass ran 24,100 tiles/s with 2 threads and 28,400 in two 1-thread processes, and
    24 large images took 57.6 CPU-s in two 1-thread processes (28.8 s if split evenly) against
    35.2 s in one 2-thread process.

    With --gpu the stages are separate (``Layout.STAGED``), so the GPU never waits for decoding or
    encoding: one actor per GPU, with one CPU, and CPU tasks for the rest. Each actor reserves half
    its share of the CPUs so the CPU tasks (the Parquet writes, and decode/encode when staged) always
    fit beside them (a reservation of every CPU stalls them, and then every restored block waits in
    the object store). Never more actors than batches: an idle actor only costs its start-up."""
    cpus = sum(n.get("CPU", 0.0) for n in nodes) or 1.0
    fused = cfg.layout is Layout.FUSED or (cfg.layout is Layout.AUTO and not cfg.gpu)
    node_cpus = [n.get("CPU", 0.0) for n in nodes if n.get("CPU", 0.0) > 0] or [cpus]
    smallest = min(node_cpus)
    actors = max(1, min(batches, wanted_actors(cfg, nodes, can_grow)))
    if cfg.cpus_per_actor:
        actor_cpus = cfg.cpus_per_actor
    elif cfg.gpu:
        actor_cpus = min(1.0, smallest / 2)
    else:
        actor_cpus = max(0.1, round(min(smallest, cpus / actors) / 2, 2))
    # torch threads: the CPUs this actor's share of the machine stands for (1 with one actor per CPU)
    threads = max(1, min(int(smallest), round(cpus / actors))) if not cfg.gpu else 1
    per_node = max(1, math.ceil(actors / len(node_cpus)))
    task_cpus = max(0.05, round(min(1.0, (smallest - per_node * actor_cpus) / 4), 2))
    return Plan(actors, actor_cpus, 1.0 if cfg.gpu else 0.0, threads, task_cpus, fused)


# A unit of work (one decode task, one model call, one encode task) holds at most --batch-size files
# and about this many bytes of them: 256 small files are ~2 MB, while 256 files of 1024x768 would be
# ~600 MB of pixels in one model call and one block. Measured on 2 CPUs: 64 -> 256 files per unit took
# 20,000 small images from 69 to 43 s (fewer, larger Ray tasks and matrix multiplies).
UNIT_BYTES = 4 * 2**20
# Units shrink toward the end of the list (guided self-scheduling): each takes at most 1/GUIDE of an
# actor's share of the bytes still to cut, and no less than MIN_UNIT_BYTES. With a fixed 4 MB, the last
# unit of 24 large images held the 9 smallest (9.6 s of work) and queued behind a busy actor while
# the other stood idle for 8.6 s of a 53 s run; an actor holds up to two units at once (Ray Data's
# default), so the tail is at most about two of the last, small units.
GUIDE = 4
MIN_UNIT_BYTES = 256 * 2**10


def work_units(files: list[dict], batch_size: int, workers: int = 1, unit_bytes: int = UNIT_BYTES,
               min_bytes: int = MIN_UNIT_BYTES) -> list[list[dict]]:
    """The files, largest first (the long units start early and the actors finish together), cut
    into units of at most ``batch_size`` files and about ``unit_bytes``, fewer toward the end so that
    ``workers`` actors finish together (a unit always takes one file; see ``GUIDE``)."""
    units: list[list[dict]] = []
    remaining = sum(f["size"] for f in files)
    size = budget = 0
    for f in sorted(files, key=lambda f: -f["size"]):
        if not units or len(units[-1]) >= batch_size or (size + f["size"] > budget and units[-1]):
            units.append([])
            size = 0
            budget = min(unit_bytes, max(min_bytes, remaining // (GUIDE * max(1, workers))))
        units[-1].append(f)
        size += f["size"]
        remaining -= f["size"]
    return units


def require_actors(plan: Plan, nodes: list[dict]) -> None:
    """Fail fast when the model actors cannot fit on this machine's private Ray (see
    :func:`raeae.cluster.require`), naming the flag to change."""
    require("raeae restore", f"{plan.actors} model actor(s)", plan.actors,
            {"CPU": plan.actor_cpus, "GPU": plan.actor_gpus}, nodes,
            "use a smaller --cpus-per-actor or fewer --actors, or join a larger cluster (RAY_ADDRESS)")


def run_pipeline(files: list[dict], model_id: str, cfg: RestoreConfig, out_uri: str) -> None:
    """Stream ``files`` through the stages into Parquet under ``out_uri``. Each unit of work is one
    block from start to end (``batch_size=None`` everywhere): decoded, restored and encoded together."""
    import ray
    import ray.data

    nodes, can_grow = alive_nodes(), not private_local()
    # units sized for every actor the cluster offers; then no more actors than units
    units = work_units(files, cfg.batch_size, wanted_actors(cfg, nodes, can_grow))
    plan = plan_stages(cfg, nodes, len(units), can_grow)
    require_actors(plan, nodes)
    # from_blocks, not from_arrow: from_arrow runs a remote task per block (per unit) for its metadata
    # and waits for them, on worker processes that a fresh local Ray is still starting; from_blocks
    # takes the metadata from the listing tables here
    ds = ray.data.from_blocks([pa.Table.from_pylist(
        [{"path": f["path"], "size": int(f["size"]),
          "mtime": float(f["mtime"]) if f["mtime"] is not None else float("nan")} for f in unit],
        schema=LISTING) for unit in units])
    storage = cfg.storage.with_environment()
    decode_kwargs = {"input_uri": cfg.input, "storage": storage, "max_pixels": cfg.max_pixels,
                     "copy_metadata": cfg.copy_metadata}
    model_kwargs = {"model": cfg.model, "model_id": model_id, "storage": storage,
                    "stride": cfg.stride, "tile_batch": cfg.tile_batch, "threads": plan.threads, "gpu": cfg.gpu,
                    "blend": cfg.blend, "ensemble": cfg.ensemble, "precision": cfg.precision,
                    "noise_level": cfg.noise_level or None, "damage": cfg.damage}
    encode_kwargs = {"png_level": cfg.png_level, "schema": SCHEMA}
    actor_pool = {"batch_size": None, "batch_format": "pyarrow",
                  "compute": ray.data.ActorPoolStrategy(size=plan.actors),
                  "num_cpus": plan.actor_cpus, "num_gpus": plan.actor_gpus}
    if plan.fused:
        ds = ds.map_batches(FusedStage, fn_constructor_kwargs={"decode_kwargs": decode_kwargs,
                                                               "encode_kwargs": encode_kwargs, **model_kwargs},
                            **actor_pool)
    else:
        ds = ds.map_batches(decode_batch, fn_kwargs=decode_kwargs, batch_size=None, batch_format="pyarrow",
                            num_cpus=plan.task_cpus)
        ds = ds.map_batches(ModelStage, fn_constructor_kwargs=model_kwargs, **actor_pool)
        # encode and write have the same resources, so Ray Data fuses them into one task per block
        ds = ds.map_batches(encode_batch, fn_kwargs=encode_kwargs, batch_size=None, batch_format="pyarrow",
                            num_cpus=plan.task_cpus)
    file_bytes = _file_bytes(cfg, nodes, sum(int(f["size"]) for f in files))
    # Without a limit Ray Data lets the fast stage (decode) run ahead of the slow one (the model) until
    # half the object store is full, so memory grows with the collection up to gigabytes. Four Parquet
    # files' worth of rows (the writer gathers one file's worth before it writes), at least 64 MiB.
    opts = ds.context.execution_options
    opts.resource_limits = opts.resource_limits.copy(object_store_memory=max(64 * 2**20, 4 * file_bytes))
    fs, path = resolve(out_uri, cfg.storage)
    show_progress("raeae restore: progress", len(files))
    try:
        ds.write_parquet(path, filesystem=fs, min_bytes_per_file=file_bytes,
                         ray_remote_args={"num_cpus": plan.task_cpus})
    finally:
        show_progress(None)


# The default Parquet file size (--file-mb 0): large files for a large collection, but a quarter of a
# smaller one's input bytes (the restored PNGs come out somewhat smaller: 20 MB from the 31 MB mix).
# Ray Data writes a file once that many bytes of rows have gathered; with one file for the whole run,
# the write and the start of its worker process came after the model actors had finished, with the
# cores idle. Measured on 2 CPUs, the 3,000-file mix: 4.1-4.4 s from the last restored row to the
# command's end with one 128 MB file; 0.8 s with 5 MB files and 0.8-1.0 s with this default (7.8 MB,
# 3 files): the writer's process starts mid-run and is still there for the last file.
FILE_BYTES = 128 * 2**20
WRITES_PER_RUN = 4
MIN_FILE_BYTES = 2**20


def _file_bytes(cfg: RestoreConfig, nodes: list[dict], input_bytes: int) -> int:
    """Bytes gathered per Parquet file: --file-mb, by default :data:`FILE_BYTES` or a
    :data:`WRITES_PER_RUN`-th of the collection's ``input_bytes`` if less; never more than 1/8 of the
    smallest node's object store. Ray Data stops the actors once its share of the store is full, and a
    writer still waiting for --file-mb of rows would then wait forever (measured: an 80 MB store with
    --file-mb 1000 hung)."""
    stores = [n.get("object_store_memory", 0.0) for n in nodes]
    limit = int(min(stores) / 8) if stores and min(stores) > 0 else None
    if cfg.file_mb:
        wanted = int(cfg.file_mb * 2**20)
    else:
        wanted = min(FILE_BYTES, max(MIN_FILE_BYTES, input_bytes // WRITES_PER_RUN))
    if limit is None or wanted <= limit:
        return wanted
    if cfg.file_mb:  # the default is capped quietly: nobody asked for a size
        print(f"raeae restore: note: Parquet files gather {limit / 2**20:.0f} MB, not --file-mb "
              f"{cfg.file_mb:g}: the object store ({min(stores) / 2**20:.0f} MB per node) is too small")
    return max(1, limit)






def object_store_stats() -> dict | None:
    """The cluster's object store now: ``{"used_bytes", "spilled_bytes"}`` (spilled = total so far),
    or None if Ray cannot say. Lets a run report spilling instead of silently slowing down, and lets
    the tests and benchmarks watch the store stay bounded."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address),
                                      timeout_seconds=10.0)
    except Exception:  # noqa: BLE001 - a private API; its absence must not fail a run
        return None
    return {"used_bytes": int(reply.store_stats.object_store_bytes_used),
            "spilled_bytes": int(reply.store_stats.spilled_bytes_total)}


def spilled_bytes() -> int | None:
    """Bytes Ray has spilled from the object store to disk so far (None if Ray cannot say)."""
    return (object_store_stats() or {}).get("spilled_bytes")


def object_store_used() -> int | None:
    """Bytes in the object store now (None if Ray cannot say); a gauge for ``PeakMemory``."""
    return (object_store_stats() or {}).get("used_bytes")


def _ensure_empty(fs: pafs.FileSystem, path: str, uri: str) -> None:
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise ValueError(f"--output {uri} is a file; give a folder or prefix")
        if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path, recursive=False)):
            raise ValueError(f"--output {uri} is not empty; restore writes a fresh folder "
                             f"(use `raeae nightly` to add to an existing output)")
    except OSError as exc:
        raise StorageError(explain(exc, uri)) from None


def restore(cfg: RestoreConfig, verbose: bool = False) -> dict:
    """List, restore and write one collection; prints and writes ``_summary.json``; returns the summary."""

    require_settings(cfg, "model", "input", "output")
    models = ckpt.RunModels.read(cfg.model, cfg.storage)  # fails fast on a bad checkpoint, before Ray starts
    states, model_id = models.headers, models.model_id
    files, skipped = list_files(cfg.input, cfg.storage)
    out_fs, out_path = resolve(cfg.output, cfg.storage)
    _ensure_empty(out_fs, out_path, cfg.output)
    connect(verbose)
    print(f"raeae restore: {len(files)} images under {cfg.input} -> {cfg.output} "
          f"(model {cfg.model} {model_id}, patch {', '.join(str(s['model_config']['patch_size']) for s in states)})")
    if skipped:
        print(f"raeae restore: {skipped_note(skipped)}")
    t0 = time.perf_counter()
    spilled_before = spilled_bytes()
    if files:
        run_pipeline(files, model_id, cfg, cfg.output)
    wall = time.perf_counter() - t0
    spilled_after = spilled_bytes()
    spilled = None if spilled_before is None or spilled_after is None else spilled_after - spilled_before
    if spilled:
        print(f"raeae restore: warning: Ray spilled {spilled / 2**20:.0f} MiB of objects to disk "
              f"(object store too small for the pipeline's working set; slower, not lossy)")
    summary = {"files": len(files), "skipped_files": len(skipped),
               **summarise(out_fs, parquet_files(out_fs, out_path), wall), "spilled_bytes": spilled,
               "input": cfg.input, "output": cfg.output, "model": cfg.model, "model_id": model_id,
               **run_context(cfg)}
    write_bytes(out_fs, posixpath.join(out_path, SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    print_summary("raeae restore", summary)
    report = write_quietly("raeae restore", restore_report, cfg.output, cfg.storage, summary)
    if report:
        print(f"raeae restore: report {cfg.output.rstrip('/')}/{REPORT_FILE}")
    return summary


def run_context(cfg: RestoreConfig) -> dict:
    """What a report says ran besides the data: raeae's version, the cluster's size, and the settings
    that differ from the defaults (the flags given)."""
    import ray

    from raeae import __version__

    try:
        nodes = alive_nodes() if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - a cluster that cannot say: the report leaves it out
        nodes = []
    cluster = ({"nodes": len(nodes), "CPUs": sum(n.get("CPU", 0.0) for n in nodes),
                "GPUs": sum(n.get("GPU", 0.0) for n in nodes)} if nodes else {})
    defaults = RestoreConfig()
    settings = {}
    for f in fields(RestoreConfig):
        value = getattr(cfg, f.name)
        if f.name not in ("model", "input", "output", "storage") and value != getattr(defaults, f.name):
            settings[f.name] = value.value if isinstance(value, enum.Enum) else value
    return {"raeae_version": __version__, "cluster": cluster, "settings": settings}


def print_summary(prefix: str, s: dict) -> None:
    print(f"{prefix}: {s['rows']} rows ({s['ok']} ok, {s['errors']} errors) of {s['files']} files in "
          f"{s['wall_s']:.1f} s: {s['images_per_s'] or 0:.1f} images/s, {s['megapixels_per_s'] or 0:.2f} MP/s; "
          f"summary {s['output'].rstrip('/')}/{SUMMARY_FILE}")
