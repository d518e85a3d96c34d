"""Gallery-scale embedding on Ray: image files in, a directory of Parquet shards out.

The input files (the sorted walk of ``qfsdk embed``) are cut into fixed shards of ``shard_size``
files: shard ``i`` holds files ``[i * shard_size, (i + 1) * shard_size)``. Ray Data sends each
shard that is not yet written to a pool of actors that each hold one :class:`Embedder`; an
actor decodes and embeds its shard exactly as ``qfsdk embed`` does and writes
``shard-XXXXX.parquet`` (index, path, embedding) atomically, after the shard's undecodable
files (index, path, error) in ``errors/shard-XXXXX.parquet``. With ``detect`` the files are photos, as
for ``qfsdk embed --detect``: each actor also holds a :class:`FaceDetector`, a shard has one row per
face (index of its photo, face, path, box, landmarks, score, embedding) and the photos where no
face was found are listed (index, path) in ``no_face/shard-XXXXX.parquet``. A shard file therefore exists only when
it is complete: a rerun skips it, and a shard whose worker was killed is recomputed (by Ray's
task retry, or by the rerun), so the union never has duplicates or holes. ``manifest.json``
pins the model, the inputs and the options that change the result; a rerun that differs is
refused. On a multi-node cluster the images and the output directory must be on a shared file
system. Ray and pyarrow are imported only when used (``pip install 'qfsdk[ray]'``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from .backends.base import import_optional
from .batch_embed import embed_files
from .detect import DETECTOR_BACKEND, DetectorOptions, FaceDetector
from .embedder import Embedder
from .errors import QfsdkError
from .files import atomic_output, sha256_file
from .images import UnreadableImage, collect_images, load_rgb, require_crops
from .manifest import describe_changes, read_manifest, write_manifest
from .metadata import read_contract
from .photos import detector_template, embed_photo_files

FORMAT = "qfsdk-gallery/1"
MANIFEST = "manifest.json"
HASHES = ("model_sha256", "inputs_sha256")  # manifest keys a refusal names without their values
ERRORS = "errors"
NO_FACE = "no_face"


@dataclass(frozen=True)
class PhotoOptions:
    """Photos in (``qfsdk embed --detect``): the detector's settings and which faces each photo keeps
    (``max_faces`` best-scoring, all: None; with ``largest``, biggest box first)."""

    detector: DetectorOptions = field(default_factory=DetectorOptions)
    max_faces: int | None = None
    largest: bool = False


@dataclass(frozen=True)
class GalleryResult:
    """What a run left in ``out_dir``; ``grayscale`` and ``resized`` count this run's shards only."""

    out_dir: Path
    images: int
    embedded: int
    errors: int
    shards: int
    computed: int
    grayscale: int = 0
    resized: int = 0
    no_face: int = 0

    @property
    def reused(self) -> int:
        """Shards already written by an earlier run."""
        return self.shards - self.computed

    def read(self) -> tuple[list[str], np.ndarray]:
        """(paths, embeddings (N, D) float32) of every shard, in input order."""
        return read_gallery(self.out_dir)

    def read_errors(self) -> list[tuple[str, str]]:
        """(path, error) of every file that could not be decoded, in input order."""
        return read_gallery_errors(self.out_dir)

    def read_no_face(self) -> list[str]:
        """The photos where no face was found (with ``detect``), in input order."""
        return [path for path, _ in _read_listing(self.out_dir / NO_FACE, "path")]


def embed_gallery(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    address: str | None = None,
    actors: int | None = None,
    shard_size: int = 1000,
    backend: str = "auto",
    batch_size: int = 32,
    flip: bool = False,
    normalize: bool = False,
    threads: int = 1,
    gpus_per_actor: float = 0.0,
    detect: PhotoOptions | None = None,
    aligned: bool = False,
) -> GalleryResult:
    """Embed the images in ``inputs`` (files, or folders walked in sorted order) into ``out_dir``.

    ``address``: the Ray cluster to use (``"auto"``, ``"ray://host:port"``; None: the instance
    this process is already connected to, else ``ray.init()``'s default). ``actors``: size of
    the actor pool (None: the cluster's CPUs / ``threads``, or its GPUs / ``gpus_per_actor``).
    ``threads``: CPU threads of each actor's backend, also the CPUs Ray reserves for it.
    ``detect``: the inputs are photos: one row per face found (see the module's docs). Without it the
    inputs are aligned crops of the model's input size (others refused before any work), or with
    ``aligned`` crops of any size, resized to the model input.
    """
    if shard_size < 1 or threads < 1 or gpus_per_actor < 0 or (actors is not None and actors < 1):
        raise ValueError("shard_size, threads and actors must be >= 1 and gpus_per_actor >= 0")
    ray = _ray()
    model_path, out_dir = Path(model_path), Path(out_dir)
    if detect is not None:
        detector_template(read_contract(model_path))  # a model without a template fails before any work
    files = collect_images(inputs)
    if not files:
        raise QfsdkError(f"no image files in {', '.join(map(str, inputs))}")
    if detect is None and not aligned:
        require_crops(files, read_contract(model_path).input_size)
    paths = [str(p) for p in files]
    options: dict[str, Any] = {"backend": backend, "flip": flip, "normalize": normalize}
    if detect is not None:  # only then, so galleries of crops made before detection still match
        options["detect"] = asdict(detect)
    manifest = _manifest(model_path, paths, shard_size, options)
    _claim(out_dir, manifest)
    rows = [{"shard": i, "paths": paths[i * shard_size : (i + 1) * shard_size]}
            for i in range(manifest["shards"]) if not _shard_file(out_dir, i).is_file()]  # fmt: skip
    done: list[dict[str, Any]] = []
    if rows:
        embedder_options = {"model_path": str(model_path.absolute()), "out_dir": str(out_dir.absolute()),
                            "cwd": str(Path.cwd()), "shard_size": shard_size, "backend": backend,
                            "batch_size": batch_size, "flip": flip, "normalize": normalize, "threads": threads,
                            "detect": detect}  # fmt: skip
        done = _embed_shards(ray, rows, embedder_options, address, actors, threads, gpus_per_actor)
    return _result(out_dir, len(paths), manifest["shards"], done)


def _manifest(model_path: Path, paths: list[str], shard_size: int, options: dict[str, Any]) -> dict[str, Any]:
    """What pins a gallery: the model, the inputs, the sharding and the options that change the embeddings."""
    return {
        "format": FORMAT,
        "model_sha256": sha256_file(model_path),
        "embedding_size": read_contract(model_path).embedding_size,
        "images": len(paths),
        "inputs_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
        "shard_size": shard_size,
        "shards": (len(paths) + shard_size - 1) // shard_size,
        "options": options,
    }


def _embed_shards(ray: ModuleType, rows: list[dict[str, Any]], embedder_options: dict[str, Any], address: str | None,
                  actors: int | None, threads: int, gpus_per_actor: float) -> list[dict[str, Any]]:
    """Embed and write each shard of ``rows`` on a pool of :class:`ShardEmbedder` actors; their count rows."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    try:
        if actors is None:
            resources = ray.cluster_resources()
            actors = int(resources.get("GPU", 0) // gpus_per_actor if gpus_per_actor else resources.get("CPU", 1) // threads)
        return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardEmbedder,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(rows))), max_tasks_in_flight_per_actor=1),
            num_cpus=threads,
            num_gpus=gpus_per_actor or None,
            fn_constructor_kwargs=embedder_options,
        ).take_all()
    finally:
        if started:
            ray.shutdown()


def _result(out_dir: Path, images: int, shards: int, done: list[dict[str, Any]]) -> GalleryResult:
    """What ``out_dir`` holds after a run that computed the shards counted in ``done``."""
    pq = _parquet()
    return GalleryResult(
        out_dir=out_dir,
        images=images,
        embedded=sum(pq.read_metadata(_shard_file(out_dir, i)).num_rows for i in range(shards)),
        errors=sum(pq.read_metadata(f).num_rows for f in sorted((out_dir / ERRORS).glob("shard-*.parquet"))),
        shards=shards,
        computed=len(done),
        grayscale=sum(int(row["grayscale"]) for row in done),
        resized=sum(int(row["resized"]) for row in done),
        no_face=sum(pq.read_metadata(f).num_rows for f in sorted((out_dir / NO_FACE).glob("shard-*.parquet"))),
    )


@dataclass
class _ShardRows:
    """One shard's results: the input position of each row, its embedding and any other columns; the
    positions that could not be decoded (with why) or held no face; counts for the report."""

    kept: list[int]
    embeddings: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    no_face: list[int] = field(default_factory=list)
    grayscale: int = 0
    resized: int = 0


class ShardEmbedder:
    """Ray Data actor: one Embedder (and with ``detect`` one FaceDetector); embeds and writes whole
    shards (one row per shard)."""

    def __init__(self, model_path: str, out_dir: str, cwd: str, shard_size: int, backend: str, batch_size: int,
                 flip: bool, normalize: bool, threads: int, detect: PhotoOptions | None = None) -> None:
        self.embedder = Embedder(model_path, backend, batch_size=batch_size, flip=flip, normalize=normalize, threads=threads)
        self.detect, self.detector = detect, None
        if detect is not None:
            name = self.embedder.backend_name
            self.detector = FaceDetector(backend=DETECTOR_BACKEND.get(name, name), threads=threads, options=detect.detector)
        self.out_dir = Path(out_dir)
        self.cwd = Path(cwd)
        self.shard_size = shard_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = [self.write_shard(int(shard), [str(p) for p in paths]) for shard, paths in zip(batch["shard"], batch["paths"])]
        keys = ("shard", "embedded", "errors", "grayscale", "resized", "no_face")
        return {key: np.array([c[key] for c in counts]) for key in keys}

    def write_shard(self, shard: int, paths: list[str]) -> dict[str, int]:
        """Embed one shard's files and write its error (and no-face) tables, then its shard file (the completion mark)."""
        pa, pq = import_optional("pyarrow", "pyarrow", "ray", "gallery shards"), _parquet()
        start = shard * self.shard_size
        files = [self.cwd / p for p in paths]  # workers need not share the driver's cwd
        rows = self._photo_rows(files) if self.detect is not None else self._crop_rows(files)
        name = _shard_file(self.out_dir, shard).name
        _write_listing(self.out_dir / ERRORS / name, start, paths, rows.failed)
        if self.detect is not None:
            _write_listing(self.out_dir / NO_FACE / name, start, paths, dict.fromkeys(rows.no_face))
        dim = self.embedder.contract.embedding_size
        table = pa.table({
            "index": pa.array([start + k for k in rows.kept], pa.int64()),
            "path": pa.array([paths[k] for k in rows.kept], pa.string()),
            **{key: _column(pa, values) for key, values in rows.columns.items()},
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.embeddings.reshape(-1), pa.float32()), dim),
        })  # fmt: skip
        with atomic_output(_shard_file(self.out_dir, shard)) as tmp:
            pq.write_table(table, tmp)
        return {"shard": shard, "embedded": len(rows.kept), "errors": len(rows.failed), "grayscale": rows.grayscale,
                "resized": rows.resized, "no_face": len(rows.no_face)}

    def _crop_rows(self, files: list[Path]) -> _ShardRows:
        """Aligned crops, as ``qfsdk embed``: one row per decodable file."""
        result = embed_files(self.embedder, files)
        kept = _positions(files, result.paths)
        failed = {k: _decode_error(files[k]) for k in sorted(set(range(len(files))) - set(kept))}
        return _ShardRows(kept, result.embeddings, failed=failed, grayscale=len(result.grayscale), resized=len(result.resized))

    def _photo_rows(self, files: list[Path]) -> _ShardRows:
        """Photos, as ``qfsdk embed --detect``: one row per face."""
        assert self.detect is not None
        done = embed_photo_files(self.embedder, files, max_faces=self.detect.max_faces, largest=self.detect.largest,
                                 detector=self.detector, workers=1)
        faces, position = done.result, {path: k for k, path in enumerate(files)}
        first = np.searchsorted(faces.sources, faces.sources)  # each row's photo's first row
        columns = {"face": np.arange(len(faces)) - first, "box": faces.boxes, "landmarks": faces.landmarks.reshape(-1, 10),
                   "score": faces.scores}  # fmt: skip
        failed = {position[p]: done.reasons.get(p, "unreadable") for p in done.unreadable}
        return _ShardRows(faces.sources.tolist(), faces.embeddings, columns, failed,
                          sorted(position[p] for p in done.no_face), len(done.grayscale))


def _column(pa: ModuleType, values: np.ndarray) -> Any:
    """A Parquet column: a number per row, or a fixed-size list of float32 for (rows, k) values."""
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1), pa.float32()), values.shape[1])


def _write_listing(path: Path, start: int, paths: list[str], listed: dict[int, str | None]) -> None:
    """``path``: the (index, path[, error]) rows of the positions ``listed`` (None: no error column),
    or no file when there are none (a later run may have fixed a file)."""
    if not listed:
        path.unlink(missing_ok=True)
        return
    pa, pq = import_optional("pyarrow", "pyarrow", "ray", "gallery shards"), _parquet()
    columns = {"index": pa.array([start + k for k in listed], pa.int64()), "path": pa.array([paths[k] for k in listed], pa.string())}
    if any(reason is not None for reason in listed.values()):
        columns["error"] = pa.array(list(listed.values()), pa.string())
    with atomic_output(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def read_gallery(out_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(paths, embeddings (N, D) float32) of a complete gallery directory, in input order."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir / MANIFEST, FORMAT)
    if manifest is None:
        raise QfsdkError(f"{out_dir}: no {MANIFEST}, so not a gallery directory")
    missing = [i for i in range(manifest["shards"]) if not _shard_file(out_dir, i).is_file()]
    if missing:
        raise QfsdkError(f"{out_dir}: {len(missing)} of {manifest['shards']} shards are not written yet "
                         f"(first: {_shard_file(out_dir, missing[0]).name}); run the embedding again to finish them")
    pq = _parquet()
    paths: list[str] = []
    chunks = [np.empty((0, manifest["embedding_size"]), np.float32)]
    for i in range(manifest["shards"]):
        table = pq.read_table(_shard_file(out_dir, i))
        paths.extend(table.column("path").to_pylist())
        values = table.column("embedding").combine_chunks().flatten().to_numpy()
        chunks.append(values.reshape(len(table), manifest["embedding_size"]))
    return paths, np.concatenate(chunks)


def read_gallery_faces(out_dir: str | Path) -> dict[str, np.ndarray]:
    """A ``detect`` gallery's face rows in input order: ``index`` (of the photo), ``face``, ``boxes``
    (K, 4), ``landmarks`` (K, 5, 2), ``scores`` (as ``qfsdk embed --detect``'s .npz)."""
    read_gallery(out_dir)  # a complete gallery, or one line saying what is missing
    pq, out_dir = _parquet(), Path(out_dir)
    manifest = read_manifest(out_dir / MANIFEST, FORMAT)
    if "detect" not in manifest["options"]:
        raise QfsdkError(f"{out_dir}: a gallery of aligned crops, not of detected faces (made without --detect)")
    tables = [pq.read_table(_shard_file(out_dir, i)) for i in range(manifest["shards"])]

    def column(name: str, width: int = 0) -> np.ndarray:
        parts = [t.column(name).combine_chunks() for t in tables]
        values = [(p.flatten() if width else p).to_numpy(zero_copy_only=False) for p in parts]
        joined = np.concatenate(values) if values else np.zeros(0)
        return joined.reshape(-1, width) if width else joined

    return {"index": column("index"), "face": column("face"), "boxes": column("box", 4),
            "landmarks": column("landmarks", 10).reshape(-1, 5, 2), "scores": column("score")}


def read_gallery_errors(out_dir: str | Path) -> list[tuple[str, str]]:
    """(path, error) of the files a gallery run could not decode, in input order."""
    return _read_listing(Path(out_dir) / ERRORS, "error")


def _read_listing(folder: Path, column: str) -> list[tuple[str, Any]]:
    """(path, ``column``) of the rows of the listing shards in ``folder``, in input order."""
    pq = _parquet()
    rows = [row for f in sorted(folder.glob("shard-*.parquet")) for row in pq.read_table(f).to_pylist()]
    return [(row["path"], row.get(column)) for row in sorted(rows, key=lambda row: row["index"])]


def _claim(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into a new or empty ``out_dir``, or check that it matches the one there."""
    path = out_dir / MANIFEST
    found = read_manifest(path, FORMAT)
    if found is not None:
        changes = describe_changes(found, manifest, form="{key} {old} -> {new}", opaque=HASHES)
        if changes:
            raise QfsdkError(f"{out_dir} holds a gallery made with other settings ({changes}); "
                             "rerun with the same model, inputs and options, or choose a new output directory")
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise QfsdkError(f"{out_dir}: not an empty directory and no gallery ({MANIFEST} missing); choose a new output directory")
    write_manifest(path, manifest)


def _shard_file(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}.parquet"


def _positions(files: list[Path], subsequence: list[Path]) -> list[int]:
    """Where the items of ``subsequence`` (``files`` in order, some left out) are in ``files``."""
    positions: list[int] = []
    for k, path in enumerate(files):
        if len(positions) < len(subsequence) and subsequence[len(positions)] == path:
            positions.append(k)
    return positions


def _decode_error(path: Path) -> str:
    """Why ``path`` cannot be decoded (embed_files keeps only which files failed)."""
    try:
        load_rgb(path)
    except UnreadableImage as exc:
        return str(exc).removeprefix(f"{path}: ")
    return "unreadable while embedding, readable afterwards"


def _ray() -> ModuleType:
    ray = import_optional("ray", "ray[data]", "ray", "Distributed embedding (--ray)")
    import_optional("ray.data", "ray[data]", "ray", "Distributed embedding (--ray)")
    return ray


def _parquet() -> ModuleType:
    return import_optional("pyarrow.parquet", "pyarrow", "ray", "Gallery shards")
