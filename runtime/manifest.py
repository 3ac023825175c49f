"""Every artifact folder (trunk engine, feature cache, adapter, fused engine) carries `manifest.json`.

It says what produced the artifact (checkpoint hash, specs, library versions, device), lists its
files with their sha256, records the parity numbers measured when it was made, and holds a hash of
itself so an edit by hand is detected. Consumers read it through `read_manifest`, which checks all
of that and refuses a mismatch with a message that says what differs and how to rebuild.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
from pathlib import Path, PurePosixPath

from edgeseg.runtime.atomic import write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.host import host_description

MANIFEST_NAME = "manifest.json"
SELF_HASH_KEY = "manifest_sha256"
VERSIONED_LIBRARIES = ("edgeseg", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "torch", "monai",
                       "openvino", "tensorrt", "nibabel", "scipy")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def portable_path(path: str | Path, base: str | Path | None = None) -> str:
    """`path` as a results file should record it: relative to `base` (default: the working directory) when
    inside it, else relative to the folder holding the edgeseg package (a checkout's root), else its
    file name only. Never the absolute path of the machine it ran on.
    """
    p = Path(path).resolve()
    roots = [Path(base).resolve() if base is not None else Path.cwd().resolve(),
             Path(__file__).resolve().parents[1]]
    for root in roots:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return p.name


def portable_paths(obj, base: str | Path | None = None):
    """`obj` (a results dict, list or value) with every string that is an absolute path made portable
    (`portable_path`): what a results file may record however its writer spelled its paths. Strings
    that merely contain a path (a command line) are left as they are."""
    if isinstance(obj, dict):
        return {k: portable_paths(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, base) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj and " " not in obj:
        return portable_path(obj, base)
    return obj


def _canonical(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_hash(manifest) -> str:
    """Hash of the manifest (its JSON, or a manifest class's `record`) without its self-hash: what a consumer
    records to name its input."""
    record = getattr(manifest, "record", manifest)
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != SELF_HASH_KEY})).hexdigest()


def library_versions() -> dict[str, str | None]:
    from edgeseg.runtime.availability import module_version

    return {name: module_version(name) for name in VERSIONED_LIBRARIES}


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(folder: str | Path, kind: str, body: dict, files: list[str | Path], *, force: bool = False) -> dict:
    """Write `folder/manifest.json` for an artifact of `kind` whose files (relative to folder) are `files`."""
    folder = Path(folder)
    manifest = {
        "kind": kind,
        "written_by": WRITTEN_BY,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "libraries": library_versions(),
        "host": host_description(),
        **body,
        "files": {str(Path(f)): file_entry(folder / f) for f in files},
    }
    manifest[SELF_HASH_KEY] = content_hash(manifest)
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, default=str) + "\n", force=force)
    return manifest


def _written_by() -> str:
    from edgeseg import __version__

    return f"edgeseg {__version__}"


WRITTEN_BY = _written_by()
# what edgeseg's writers leave in an artifact folder besides the listed files (claim_output ignores them)
OWN_FILES = (".edgeseg.lock", "*.rejected", "*.rejected.json", "timing.*.cache")
ARTIFACT_KINDS = {"trunk": "an exported trunk", "engine": "a fused engine", "adapter": "an adapter",
                  "feature-cache": "a feature cache", "triton-model": "a Triton model (edgeseg triton)"}


def edgeseg_manifest(folder: str | Path) -> dict | None:
    """The manifest in `folder` when edgeseg wrote it (kind known, self-hash intact; `written_by` from this
    version on), None when there is no manifest.json; a manifest.json edgeseg did not write is refused."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        m = None
    ok = (isinstance(m, dict) and m.get("kind") in ARTIFACT_KINDS and m.get(SELF_HASH_KEY) == content_hash(m)
          and str(m.get("written_by", "edgeseg")).startswith("edgeseg") and not path.is_symlink())
    if not ok:
        raise InputError("holds a manifest.json that edgeseg did not write (or that was edited): it is not an "
                         "edgeseg artifact, and edgeseg will not replace or delete anything there, even with --force",
                         path=path, fix="choose another --out (a new or empty folder)")
    return m


def claim_output(out: str | Path, kind: str, *, force: bool, rebuild: str = "", ignore: tuple[str, ...] = (),
                 dry_run: bool = False) -> list[Path]:
    """Make `out` ready for a new artifact of `kind`, or refuse; returns what `--force` deleted.

    A new or empty folder is fine. A folder holding an edgeseg artifact of `kind` is refused without
    `force`; with it, exactly the files its manifest lists (and the manifest) are deleted, never a tree.
    An artifact of another kind, a manifest edgeseg did not write, or any file no edgeseg manifest there
    lists (a user's file) is refused even with `force`, saying what is there. `ignore`: names of the
    writer's own bookkeeping (the lock file, temporaries) that do not count.
    """
    from edgeseg.runtime.atomic import TMP_MARK, unlink_own

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("is a file, not a folder", path=out, fix="choose a folder for --out")
    if not out.exists():
        return []
    what = ARTIFACT_KINDS.get(kind, f"a {kind}")
    m = edgeseg_manifest(out)
    if m is not None and m["kind"] != kind:
        raise InputError(f"holds {ARTIFACT_KINDS[m['kind']]} (edgeseg {m['kind']}), not {what}: edgeseg will not "
                         "replace it with another kind of artifact, even with --force", path=out,
                         fix="choose another --out for this one")
    listed = set((m or {}).get("files") or {})
    strangers = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        if (rel in listed or rel == MANIFEST_NAME or any(fnmatch.fnmatch(rel, pat) for pat in ignore)
                or (TMP_MARK in p.name and p.name.startswith("."))):
            continue
        strangers.append(rel)
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise InputError(f"holds files that no edgeseg manifest there lists ({shown}): edgeseg never overwrites or "
                         "deletes a file it did not write, even with --force", path=out,
                         fix="choose a new or empty folder for --out, or move those files away")
    if m is None:
        return []
    if not force:
        raise InputError(f"already holds {what}", path=out,
                         fix="pass --force to replace it, or choose another --out")
    if dry_run:  # checked early, deleted only once the new artifact's inputs are known to be good
        return []
    removed = []
    for rel in sorted(listed):
        f = member_path(out, rel, fix=rebuild)
        if f.exists():
            unlink_own(f)
            removed.append(f)
    unlink_own(out / MANIFEST_NAME)
    for d in sorted((p for p in out.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()  # only folders the removed files leave empty
        except OSError:
            pass
    return removed


def member_path(folder: str | Path, name, *, manifest: dict | None = None, fix: str = "") -> Path:
    """The file `name` that an artifact's manifest points at, confined to the artifact's folder.

    A manifest is self-hashed, not signed: anyone can rewrite one and recompute the hash. So every path it
    holds must be relative, without `..`, not a link, resolve inside the folder, be a regular file (never
    `/dev/zero` or a folder) and, given the manifest, be one of the files it lists and hashes. Checked
    before the file is opened.
    """
    folder = Path(folder)
    where = folder / MANIFEST_NAME
    fix = fix or "rebuild the artifact with the edgeseg command that made it"
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"names a file as {name!r}, which is not a file name", path=where, fix=fix)
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or Path(name).is_absolute() or ".." in pure.parts or name.startswith("~"):
        raise InputError(f"names {name!r}, outside its folder: an artifact's files live inside it", path=where, fix=fix)
    full, p = folder / name, folder
    for part in pure.parts:
        p = p / part
        if p.is_symlink():
            raise InputError(f"names {name!r}, which is (or passes through) a symbolic link", path=where, fix=fix)
    try:
        inside = folder.resolve() in full.resolve().parents
    except OSError:
        inside = False
    if not inside:
        raise InputError(f"names {name!r}, which resolves outside its folder", path=where, fix=fix)
    if full.exists() and not full.is_file():
        raise InputError(f"names {name!r}, which is not a regular file", path=where, fix=fix)
    if manifest is not None and name not in (manifest.get("files") or {}):
        raise InputError(f"names {name!r}, which is not among the files it lists and hashes", path=where, fix=fix)
    return full


def read_manifest(folder: str | Path, kind: str, *, verify_files: bool = True, rebuild: str = "") -> dict:
    """Read and check an artifact's manifest: kind, self-hash, and (optionally) every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    fix = rebuild or "rebuild the artifact with the edgeseg command that made it"
    if not folder.is_dir():
        raise InputError(f"is not an edgeseg {kind} folder (no such folder)", path=folder, fix=fix)
    if not path.exists():
        raise InputError(f"has no {MANIFEST_NAME}: not an edgeseg {kind}, or an unfinished one", path=folder, fix=fix)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"is not valid JSON ({e})", path=path, fix=fix) from None
    if not isinstance(manifest, dict):
        raise InputError(f"holds a JSON {type(manifest).__name__}, not a manifest object", path=path, fix=fix)
    if manifest.get("kind") != kind:
        raise InputError(f"describes a {manifest.get('kind')!r}, not a {kind!r}", path=path,
                         fix=f"pass the folder of a {kind}")
    if manifest.get(SELF_HASH_KEY) != content_hash(manifest):
        raise InputError("was edited after it was written (its self-hash does not match)", path=path,
                         fix=f"{fix}; manifests record what produced an artifact and must not be edited by hand")
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise InputError("its files entry is not a name -> {sha256, bytes} table", path=path, fix=fix)
    for name, entry in files.items():
        member_path(folder, name, fix=fix)  # confined, before anything is opened
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int) and not isinstance(entry.get("bytes"), bool)):
            raise InputError(f"its entry for {name} lacks a sha256 or a byte count", path=path, fix=fix)
    if verify_files:
        for name, entry in files.items():
            f = folder / name
            if not f.exists():
                raise InputError(f"lists {name}, which is missing", path=path, fix=fix)
            if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                raise InputError(f"{name} differs from the file this manifest recorded (size or sha256)", path=f, fix=fix)
    return manifest
