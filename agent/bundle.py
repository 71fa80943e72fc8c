"""Pack bundles: a pack in one file, with a manifest that names every file by hash,
signed by its team's key.

A bundle is a gzipped tar of `manifest.json`, `signature.json` (once signed) and
the pack's files under `pack/`. Nothing of the archive's own metadata is trusted:
only regular members are read, each must be named in the manifest with its size
and SHA-256, the modes written are 0644 or 0755 from the manifest's `executable`,
and paths are plain relative names (no `..`, no hidden parts, no links). Sizes
are checked before anything is kept: the gzip stream is inflated to a bound (and its
checksum checked), each member's size is checked from its header before its data is
read. A bundle that inflates or claims gigabytes costs a few megabytes to refuse.

The signature covers the manifest's exact bytes; the manifest covers every file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent import __version__
from agent.errors import LogmendError
from agent.packs import NAME
from agent.signing import PublicKey, Signature, verify_signature

FORMAT = "logmend-pack/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
FILES = "pack/"
MAX_BUNDLE = 4 * 1024 * 1024  # compressed, as fetched or uploaded (the receiver's body limit)
MAX_FILE = 1024 * 1024  # packs are text: pack.toml, scripts, articles
MAX_TOTAL = 8 * 1024 * 1024  # every member, inflated
MAX_INFLATED = MAX_TOTAL + 4 * 1024 * 1024  # and their tar headers
MAX_FILES = 1000
MAX_PATH = 512
MAX_PART = 255  # bytes of one path part, as file systems allow
MAX_META = 256 * 1024  # manifest.json, signature.json
MAX_DEPTH = 8
SKIPPED = ("__pycache__",)  # build leaves these out, as it does hidden names


class BundleError(LogmendError):
    """A bundle that cannot be built, read, trusted or unpacked; says which and why."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the pack folder, POSIX
    sha256: str
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    owner: str
    min_agent: str
    files: tuple[FileEntry, ...]

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "owner": self.owner,
            "min_agent": self.min_agent,
            "files": {
                f.path: {"sha256": f.sha256, "size": f.size, "executable": f.executable}
                for f in self.files
            },
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} (owner {self.owner})"


@dataclass(frozen=True, slots=True)
class Bundle:
    manifest: Manifest
    manifest_bytes: bytes  # exactly as signed
    files: Mapping[str, bytes]
    signature: Signature | None

    def digest(self) -> str:
        """The bundle's identity: the SHA-256 of its signed manifest."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()


# building


def build(pack_dir: Path, name: str, version: str, owner: str, min_agent: str) -> bytes:
    """The bundle of a pack folder (proven by the caller), unsigned and reproducible:
    the same files give the same bytes."""
    files = collect(pack_dir)
    entries = tuple(
        FileEntry(path, hashlib.sha256(data).hexdigest(), len(data), executable)
        for path, (data, executable) in sorted(files.items())
    )
    manifest = Manifest(name, version, owner, parse_version(min_agent, "min_agent"), entries)
    return write(manifest.to_bytes(), {p: d for p, (d, _) in files.items()}, entries, None)


def collect(pack_dir: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file of a pack folder (hidden names and caches left out): bytes, executable."""
    found: dict[str, tuple[bytes, bool]] = {}
    total = 0
    for folder, dirs, names in os.walk(pack_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _left_out(d))
        for entry in [*dirs, *sorted(names)]:
            path = Path(folder) / entry
            if path.is_symlink():
                raise BundleError(f"{path}: a symbolic link cannot go in a bundle (copy the file)")
        for entry in sorted(names):
            if _left_out(entry) or entry.endswith(".pyc"):
                continue
            path = Path(folder) / entry
            relative = path.relative_to(pack_dir).as_posix()
            problem = path_problem(relative)
            if problem:
                raise BundleError(f"{path}: {problem}")
            info = path.stat()
            if not path.is_file():
                raise BundleError(f"{path}: not a regular file")
            if info.st_size > MAX_FILE:
                raise BundleError(f"{path}: {info.st_size} bytes, over {MAX_FILE} a file")
            total += info.st_size
            if total > MAX_TOTAL or len(found) >= MAX_FILES:
                raise BundleError(f"{pack_dir}: over {MAX_TOTAL} bytes or {MAX_FILES} files")
            found[relative] = (path.read_bytes(), bool(info.st_mode & 0o100))
    if "pack.toml" not in found:
        raise BundleError(f"{pack_dir}: no pack.toml")
    return found


def _left_out(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED


def write(
    manifest_bytes: bytes,
    files: Mapping[str, bytes],
    entries: tuple[FileEntry, ...],
    signature: Signature | None,
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=9) as tar:
        _add(tar, MANIFEST, manifest_bytes, False)
        if signature is not None:
            _add(tar, SIGNATURE, signature.to_bytes(), False)
        for entry in entries:
            _add(tar, FILES + entry.path, files[entry.path], entry.executable)
    data = out.getvalue()
    # gzip's header holds a time: zero it, so the same pack gives the same bundle
    return data[:4] + b"\0\0\0\0" + data[8:]


def _add(tar: tarfile.TarFile, name: str, data: bytes, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o755 if executable else 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def signed(bundle: Bundle, signature: Signature) -> bytes:
    """The same bundle with `signature` (replacing any earlier one)."""
    return write(bundle.manifest_bytes, bundle.files, bundle.manifest.files, signature)


# reading


def read(data: bytes, where: str) -> Bundle:
    """A bundle's manifest and files, every file checked against the manifest (raises
    BundleError naming `where`). The signature is read, not yet checked: see `verify`."""
    if len(data) > MAX_BUNDLE:
        raise BundleError(f"{where}: {len(data)} bytes, over the {MAX_BUNDLE} a bundle may have")
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(_inflate(data, where)), mode="r:") as tar:
            while (member := tar.next()) is not None:
                if len(members) >= MAX_FILES + 2:
                    raise BundleError(f"{where}: over {MAX_FILES} files")
                if not member.isfile():
                    raise BundleError(f"{where}: {member.name!r} is not a regular file")
                if member.name in members:
                    raise BundleError(f"{where}: {member.name!r} is in it twice")
                limit = MAX_FILE if member.name.startswith(FILES) else MAX_META
                total += member.size
                if member.size > limit or total > MAX_TOTAL:
                    raise BundleError(f"{where}: {member.name!r} is too large ({member.size})")
                stream = tar.extractfile(member)
                assert stream is not None
                members[member.name] = stream.read(member.size)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleError(f"{where}: not a pack bundle ({exc})") from None
    manifest_bytes = members.pop(MANIFEST, None)
    if manifest_bytes is None:
        raise BundleError(f"{where}: no {MANIFEST}")
    manifest = parse_manifest(manifest_bytes, where)
    signature_bytes = members.pop(SIGNATURE, None)
    try:
        signature = None if signature_bytes is None else Signature.parse(signature_bytes)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    files: dict[str, bytes] = {}
    for name, content in members.items():
        if not name.startswith(FILES):
            raise BundleError(f"{where}: {name!r} is not part of a pack bundle")
        files[name[len(FILES) :]] = content
    listed = {f.path: f for f in manifest.files}
    extra = sorted(files.keys() - listed.keys())
    if extra:
        raise BundleError(f"{where}: {extra[0]!r} is in the bundle but not in its manifest")
    for path, entry in sorted(listed.items()):
        found = files.get(path)
        if found is None:
            raise BundleError(f"{where}: {path!r} is in the manifest but not in the bundle")
        if len(found) != entry.size or hashlib.sha256(found).hexdigest() != entry.sha256:
            raise BundleError(f"{where}: {path!r} does not match its hash in the manifest")
    return Bundle(manifest, manifest_bytes, files, signature)


def _inflate(data: bytes, where: str) -> bytes:
    """The whole gzip stream, inflated at most to MAX_INFLATED and its checksum checked
    (tarfile stops reading at the archive's end, before gzip's CRC is ever seen)."""
    inflater = zlib.decompressobj(wbits=31)  # gzip only
    try:
        out = inflater.decompress(data, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise BundleError(f"{where}: not a pack bundle ({exc})") from None
    if len(out) > MAX_INFLATED:
        raise BundleError(f"{where}: inflates to over {MAX_INFLATED} bytes: too large")
    if not inflater.eof or inflater.unused_data:
        raise BundleError(f"{where}: not a pack bundle (cut short, or data after its end)")
    return out


def parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{where}: {MANIFEST} is not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BundleError(f"{where}: {MANIFEST}: format is not {FORMAT!r}")
    fields = {}
    for key in ("name", "version", "owner", "min_agent"):
        value = body.get(key)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise BundleError(f"{where}: {MANIFEST}: {key} {value!r} is not a plain name")
        fields[key] = value
    listed = body.get("files")
    if not isinstance(listed, dict) or "pack.toml" not in listed or len(listed) > MAX_FILES:
        raise BundleError(f"{where}: {MANIFEST}: files must name pack.toml (at most {MAX_FILES})")
    entries = []
    for path, entry in sorted(listed.items()):
        problem = path_problem(path)
        if problem:
            raise BundleError(f"{where}: {MANIFEST}: {path!r}: {problem}")
        sha, size, executable = (
            (entry.get("sha256"), entry.get("size"), entry.get("executable"))
            if isinstance(entry, dict)
            else (None, None, None)
        )
        if not (
            isinstance(sha, str)
            and len(sha) == 64
            and all(c in "0123456789abcdef" for c in sha)
            and type(size) is int
            and 0 <= size <= MAX_FILE
            and isinstance(executable, bool)
        ):
            raise BundleError(f"{where}: {MANIFEST}: {path!r}: needs sha256, size and executable")
        entries.append(FileEntry(path, sha, size, executable))
    paths = {e.path for e in entries}
    for entry in entries:  # a file where another's folder would be: cannot be unpacked
        folders = PurePosixPath(entry.path).parents
        clash = next((str(f) for f in folders if str(f) in paths), None)
        if clash is not None:
            raise BundleError(f"{where}: {MANIFEST}: {clash!r} is a file and a folder")
    parse_version(fields["min_agent"], f"{where}: {MANIFEST}: min_agent")
    return Manifest(
        fields["name"], fields["version"], fields["owner"], fields["min_agent"], tuple(entries)
    )


def path_problem(path: str) -> str | None:
    """Why a file's path may not be in a bundle, or None: plain relative names only."""
    if not path or len(path) > MAX_PATH or "\\" in path or path.startswith("/"):
        return "not a plain relative path"
    parts = PurePosixPath(path).parts
    if len(parts) > MAX_DEPTH or PurePosixPath(path).as_posix() != path:
        return "not a plain relative path"
    for part in parts:
        if part in (".", "..") or part.startswith(".") or not part.isprintable():
            return f"{part!r} is not allowed in a path"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_PART:
            return f"a part of it is over {MAX_PART} bytes"
    return None


def parse_version(text: str, what: str) -> str:
    """A dotted version of numbers (1.2.3), as given; raises BundleError naming `what`."""
    parts = text.split(".")
    if not (1 <= len(parts) <= 4 and all(p.isdigit() and len(p) <= 6 for p in parts)):
        raise BundleError(f"{what}: {text!r} is not a version like 1.2.3")
    return text


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


# trusting and unpacking


def verify(bundle: Bundle, trusted: Mapping[str, PublicKey], where: str) -> PublicKey:
    """The key that signed the bundle, which must be trusted here and belong to the
    pack's owner; and this agent must be recent enough (raises BundleError why not)."""
    manifest = bundle.manifest
    if bundle.signature is None:
        raise BundleError(f"{where}: {manifest.label} is not signed")
    key = trusted.get(bundle.signature.key_id)
    if key is None:
        raise BundleError(
            f"{where}: {manifest.label} is signed by key {bundle.signature.key_id},"
            " which is not trusted here"
        )
    if key.owner != manifest.owner:
        raise BundleError(
            f"{where}: {manifest.label} is signed by key {key.key_id} of {key.owner},"
            f" not of the pack's owner {manifest.owner}"
        )
    if not verify_signature(key, bundle.signature, bundle.manifest_bytes):
        raise BundleError(
            f"{where}: {manifest.label}: the signature does not match the manifest"
            " (changed after signing?)"
        )
    declared = declared_identity(bundle)
    if declared != (manifest.name, manifest.version, manifest.owner):
        name, version, owner = declared
        raise BundleError(
            f"{where}: the manifest says {manifest.label}, its pack.toml says"
            f" {name} {version} (owner {owner}): a key vouches for what the manifest names"
        )
    if version_key(manifest.min_agent) > version_key(__version__):
        raise BundleError(
            f"{where}: {manifest.label} needs logmend {manifest.min_agent} or later"
            f" (this is {__version__})"
        )
    return key


def declared_identity(bundle: Bundle) -> tuple[str, str, str]:
    """(name, version, owner) as the bundle's pack.toml declares them."""
    return pack_head(bundle.files["pack.toml"])


def pack_head(raw: bytes) -> tuple[str, str, str]:
    """(name, version, owner) a pack.toml declares, as the agent reads them (version "0"
    when it says none); what cannot be read as "?"."""
    import tomllib

    try:
        head = tomllib.loads(raw.decode("utf-8")).get("pack", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError, AttributeError):
        return ("?", "?", "?")
    if not isinstance(head, dict):
        return ("?", "?", "?")
    values = (head.get("name"), head.get("version", "0"), head.get("owner"))
    return tuple(v if isinstance(v, str) else "?" for v in values)  # type: ignore[return-value]


def unpack(bundle: Bundle, dest: Path) -> None:
    """Write the bundle's files into `dest`, a folder this creates (0755): files 0644 or
    0755, never following a link, never outside `dest`."""
    dest.mkdir(mode=0o755)
    os.chmod(dest, 0o755)  # noqa: S103 - whatever the umask; fix users read the scripts
    for entry in bundle.manifest.files:
        target = dest.joinpath(*PurePosixPath(entry.path).parts)
        for folder in reversed(target.relative_to(dest).parents[:-1]):
            (dest / folder).mkdir(mode=0o755, exist_ok=True)
            os.chmod(dest / folder, 0o755)  # noqa: S103 - as the pack folder
        mode = 0o755 if entry.executable else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(bundle.files[entry.path])
            out.flush()
            os.fsync(out.fileno())
        os.chmod(target, mode)
