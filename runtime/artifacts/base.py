"""What every artifact's manifest class shares: its kind, the command that rebuilds it, and one way in and out.

An artifact kind is one frozen dataclass (`TrunkManifest`, `EngineManifest`, `AdapterManifest`; the
feature cache's beside them): typed fields for what readers use, `extra` for what the writer records
and no reader interprets (parity numbers, timings, training curves), and `record`, the whole JSON as
written or read. The writer builds the dataclass and calls `write()` (`write_manifest` adds the
envelope: kind, versions, host, file hashes, self-hash); readers call `from_folder()` (`read_manifest`
checks kind, self-hash, every file's sha256 and their confinement, then the class parses and
sanity-checks its fields). The JSON keeps its keys and values, so artifacts already on disk still open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import (
    MANIFEST_NAME,
    OWN_FILES,
    SELF_HASH_KEY,
    claim_output,
    content_hash,
    member_path,
    read_manifest,
    write_manifest,
)

# what `write_manifest` puts around a writer's body: in `record`, never among a class's fields or extras
ENVELOPE = ("kind", "written_by", "created", "libraries", "host", "files", SELF_HASH_KEY)

M = TypeVar("M", bound="ArtifactManifest")


def as_json(value: Any) -> Any:
    """A field's value as the manifest's JSON holds it (typed records by their `to_dict`, tuples as lists)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class ArtifactManifest:
    """The manifest of one artifact kind. Subclasses declare their fields in the order the JSON holds them."""

    KIND: ClassVar[str]  # the manifest's "kind" (a key of `runtime.manifest.ARTIFACT_KINDS`)
    REBUILD: ClassVar[str]  # the command that makes this artifact again, shown in refusals
    AGAIN: ClassVar[str]  # how a refusal's fix begins ("re-export the trunk"), followed by REBUILD
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # keys without which this edgeseg cannot read the manifest

    extra: Mapping[str, Any] = field(default_factory=dict)  # recorded keys no reader interprets, kept as written
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the whole JSON

    # --- reading ----------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls: type[M], folder: str | Path, *, verify_files: bool = True) -> M:
        """The manifest of the artifact in `folder`: kind, self-hash, files (sha256 with `verify_files`) and
        confinement checked by `read_manifest`, then parsed and sanity-checked by the class."""
        folder = Path(folder)
        record = read_manifest(folder, cls.KIND, verify_files=verify_files, rebuild=cls.REBUILD)
        return cls.from_record(record, path=folder / MANIFEST_NAME)

    @classmethod
    def from_record(cls: type[M], record: Mapping[str, Any], *, path: Path | None = None) -> M:
        """Parse a manifest's JSON (no hashes checked: that is `from_folder`'s); `path` names it in refusals."""
        missing = [k for k in cls.REQUIRED if k not in record]
        if missing:
            article = "an" if cls.KIND[0] in "aeiou" else "a"
            raise InputError(f"lacks {', '.join(missing)}: not {article} {cls.KIND} manifest this edgeseg can read",
                             path=path, fix=cls.fix())
        typed = cls._parse(record, path)
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in record.items() if k not in names and k not in ENVELOPE}
        return cls(**typed, extra=extra, record=dict(record))

    @classmethod
    def _parse(cls, record: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
        """The typed fields' values from the JSON; refuse what this edgeseg cannot read."""
        raise NotImplementedError

    @classmethod
    def fix(cls) -> str:
        return f"{cls.AGAIN}: {cls.REBUILD}"

    # --- writing ----------------------------------------------------------------------------------

    @classmethod
    def claim(cls, out: str | Path, *, force: bool, dry_run: bool = False,
              ignore: tuple[str, ...] = OWN_FILES) -> list[Path]:
        """`claim_output` for this kind: only an edgeseg artifact of this kind is replaced (with `force`)."""
        return claim_output(out, cls.KIND, force=force, ignore=ignore, dry_run=dry_run)

    def body(self) -> dict[str, Any]:
        """The JSON the writer records: the typed fields in declaration order, then the extras."""
        typed = {f.name: as_json(getattr(self, f.name)) for f in dataclasses.fields(self)
                 if f.name not in ("extra", "record")}
        return {**typed, **self.extra}

    def write(self: M, folder: str | Path, files: Sequence[str | Path], *, force: bool = True) -> M:
        """Write `folder/manifest.json` (last: nothing is this artifact before it) listing `files` (relative
        to folder) with their sha256; returns the manifest as written (its `record` set)."""
        record = write_manifest(folder, self.KIND, self.body(), list(files), force=force)
        return dataclasses.replace(self, record=record)

    # --- what every reader asks -------------------------------------------------------------------

    @property
    def sha256(self) -> str:
        """The manifest's content hash: what a consumer records to name this artifact as its input."""
        return content_hash(self.record)

    @property
    def files(self) -> Mapping[str, Mapping[str, Any]]:
        return self.record.get("files") or {}

    def member(self, folder: str | Path, name: Any) -> Path:
        """The file `name` of this artifact, confined to `folder` and among the files the manifest hashes."""
        return member_path(folder, name, manifest=self.record)
