"""Real IR collections offline, through ``ir_datasets``.

``ir_datasets`` only checks md5 sums while downloading: an archive already at a dataset's cache path is used
as is. :func:`seed_local_collections` therefore copies the archives of the shared data folder (see
``/work/shared/data/README.md``) to the cache paths ``ir_datasets`` expects, inside a writable home
(default ``cache_dir('ir_datasets')``), and registers the TREC DL 2019 re-ranking subset (plain files) as
``local/msmarco-passage-dl19``. After that these ids work, also as ``pt.get_dataset('irds:<id>')``:

- ``cranfield``, ``vaswani``, ``beir/scifact``, ``beir/scifact/train``, ``beir/scifact/test``
- ``local/msmarco-passage-dl19`` (docs, queries, qrels, scoreddocs = Anserini BM25 top-100)

Outside this environment (with internet) the standard ids download as usual; only the DL19 subset needs the
shared files.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from .paths import cache_dir, shared_data_dir

__all__ = ["DL19_ID", "COLLECTIONS", "seed_local_collections", "ensure_dataset", "pt_dataset"]

DL19_ID = "local/msmarco-passage-dl19"

# collection -> {file in the shared data folder: path relative to the ir_datasets home}
COLLECTIONS: dict[str, dict[str, str]] = {
    "vaswani": {"vaswani/npl.tar.gz": "vaswani/npl.tar.gz"},
    "cranfield": {"cranfield/cran.tar.gz": "cranfield/cran.tar.gz"},
    "beir/scifact": {"scifact/scifact.zip": "beir/scifact/source.zip"},
    DL19_ID: {f"msmarco-passage-dl19/{f}": f"{DL19_ID}/{f}"
              for f in ("docs.tsv", "queries.tsv", "qrels.txt", "bm25_top100.run")},
}

_DL19_QREL_DEFS = {0: "Irrelevant", 1: "Related", 2: "Highly relevant", 3: "Perfectly relevant"}

_registered_home: Path | None = None   # the home ir_datasets' built-in datasets were last registered under
_seeded: set[tuple[Path, str]] = set()  # (home, collection) pairs done in this process


def _collection_of(dataset_id: str) -> str | None:
    """The key of :data:`COLLECTIONS` that ``dataset_id`` belongs to, or ``None``."""
    for key in COLLECTIONS:
        if dataset_id == key or dataset_id.startswith(key + "/"):
            return key
    return None


def _use_home(home: Path) -> None:
    """Point ``ir_datasets`` at ``home``, also when it was imported already.

    ``ir_datasets.util.home_path()`` reads ``IR_DATASETS_HOME`` at every call, but the built-in datasets
    compute their file paths once, when ``ir_datasets`` is imported (``base_path = home_path()/NAME`` in each
    module's ``_init``). So once imported, changing the variable is not enough: the seeded collections are
    registered again (their ``_init`` re-run) under the new home.
    """
    global _registered_home
    os.environ["IR_DATASETS_HOME"] = str(home)
    if _registered_home == home:
        return
    if "ir_datasets" in sys.modules:
        import ir_datasets
        from ir_datasets.datasets import beir, cranfield, vaswani
        registered = ir_datasets.registry._registered  # no public way to replace an entry
        for module in (cranfield, vaswani, beir):
            for name in [n for n in registered if n == module.NAME or n.startswith(module.NAME + "/")]:
                del registered[name]
            module.base, module.subsets = module._init()
    else:
        import ir_datasets  # noqa: F401  (registers its datasets under IR_DATASETS_HOME)
    _registered_home = home


def _register_dl19(folder: Path) -> None:
    """Register the DL19 files in ``folder`` as :data:`DL19_ID` (replacing an earlier registration)."""
    import ir_datasets
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload
    from ir_datasets.util.metadata import MetadataComponent, MetadataProvider

    files = {"docs": "docs.tsv", "queries": "queries.tsv", "qrels": "qrels.txt", "scoreddocs": "bm25_top100.run"}
    counts = {}
    for entity, file in files.items():  # one record a line in each file: the counts ir_datasets reports
        with open(folder / file, "rb") as f:
            counts[entity] = {"count": sum(1 for line in f if line.strip())}
    dataset = ir_datasets.Dataset(
        TsvDocs(LocalDownload(folder / files["docs"]), lang="en"),
        TsvQueries(LocalDownload(folder / files["queries"]), lang="en"),
        TrecQrels(LocalDownload(folder / files["qrels"]), _DL19_QREL_DEFS),
        TrecScoredDocs(LocalDownload(folder / files["scoreddocs"])),
    )
    dataset = ir_datasets.Dataset(MetadataComponent(DL19_ID, dataset, MetadataProvider(lambda: {DL19_ID: counts})),
                                  dataset)
    ir_datasets.registry._registered.pop(DL19_ID, None)
    ir_datasets.registry.register(DL19_ID, dataset)


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless an identical-looking copy (same size, not older) is there."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")
    shutil.copy2(src, tmp)
    tmp.replace(dst)


def seed_local_collections(source: str | Path | None = None, ir_datasets_home: str | Path | None = None,
                           collections: list[str] | tuple[str, ...] | None = None) -> Path:
    """Make the offline collections usable through ``ir_datasets`` and return the ``ir_datasets`` home.

    Copies the archives of ``source`` (default :func:`~pyterrier_matroyshka.offline.paths.shared_data_dir`) to the
    cache paths ``ir_datasets`` expects inside ``ir_datasets_home`` (default ``cache_dir('ir_datasets')``),
    sets ``IR_DATASETS_HOME`` (re-registering the built-in datasets if ``ir_datasets`` was imported already)
    and registers :data:`DL19_ID`. The files are copied rather than linked: they are small (~7 MB in all),
    and ``ir_datasets`` writes its extracted files and docstores beside them. Idempotent: a second call copies
    nothing (it compares sizes and times) and registers nothing again.

    Args:
        source: folder with the layout of ``/work/shared/data`` (``vaswani/npl.tar.gz``,
            ``cranfield/cran.tar.gz``, ``scifact/scifact.zip``, ``msmarco-passage-dl19/*``).
        ir_datasets_home: writable folder to use as ``IR_DATASETS_HOME``.
        collections: keys of :data:`COLLECTIONS` to seed (default: all of them).

    Raises:
        FileNotFoundError: when ``source`` or one of the requested files is missing; the message says how
            to fix it.
    """
    source = Path(source) if source is not None else shared_data_dir()
    if source is None or not source.is_dir():
        raise FileNotFoundError(
            f"offline collections folder not found: {source if source is not None else '../shared/data'}. "
            "Set MATROYSHKA_SHARED_DATA (or pass source=) to a folder holding vaswani/npl.tar.gz, "
            "cranfield/cran.tar.gz, scifact/scifact.zip and msmarco-passage-dl19/; with internet access, "
            "use the ir_datasets ids directly (they download).")
    home = Path(ir_datasets_home) if ir_datasets_home is not None else cache_dir("ir_datasets")
    home = home.resolve()
    keys = list(COLLECTIONS) if collections is None else list(collections)
    unknown = [k for k in keys if k not in COLLECTIONS]
    if unknown:
        raise UserError(f"unknown collection(s) {unknown}; known: {list(COLLECTIONS)}")

    for key in keys:
        for rel_src, rel_dst in COLLECTIONS[key].items():
            src = source / rel_src
            if not src.is_file():
                raise FileNotFoundError(
                    f"{src} is missing (needed for the {key} collection). Copy the file from the shared data "
                    f"folder (see its README.md) or pass collections= without {key!r}.")
            _copy_if_changed(src, home / rel_dst)

    _use_home(home)
    for key in keys:
        if key == DL19_ID and (home, key) not in _seeded:
            _register_dl19(home / DL19_ID)
        _seeded.add((home, key))
    return home


def _strip_prefix(name: str) -> str:
    return name[len("irds:"):] if name.startswith("irds:") else name


def ensure_dataset(name: str):
    """Return the ``ir_datasets`` dataset ``name`` (``irds:`` prefix allowed), seeding its offline
    collection first when it is one of :data:`COLLECTIONS` and this process has not seeded it yet.

    Without a shared data folder the standard ids fall back to ``ir_datasets``' normal download (with a
    warning); :data:`DL19_ID` then raises the seeding error.
    """
    name = _strip_prefix(name)
    key = _collection_of(name)
    if key is not None and (_registered_home, key) not in _seeded:
        try:
            seed_local_collections(collections=[key])
        except FileNotFoundError as e:
            if key == DL19_ID:
                raise
            warnings.warn(f"{e} Falling back to ir_datasets' download of {name!r}.")
    import ir_datasets  # after seeding, so that a first import already sees IR_DATASETS_HOME

    try:
        return ir_datasets.load(name)
    except KeyError:
        raise UserError(f"unknown dataset {name!r}: not an ir_datasets id (offline here: cranfield, vaswani, "
                        f"beir/scifact/train, beir/scifact/test, {DL19_ID})") from None


def pt_dataset(name: str):
    """``pt.get_dataset('irds:<name>')`` after :func:`ensure_dataset` (``irds:`` prefix allowed)."""
    import pyterrier as pt

    name = _strip_prefix(name)
    ensure_dataset(name)
    return pt.get_dataset(f"irds:{name}")
