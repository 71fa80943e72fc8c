"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a data
directory in a temp directory, run as an unprivileged user (PostgreSQL refuses
root), listening on a free loopback port only; a new database per test."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
PASSWORD_ROLE = "logmend_pw"  # the one role that must give a password (scram), for its test
UNPRIVILEGED = 65534  # nobody, when the tests run as root


def server_binaries() -> Path | None:
    """Debian's newest PostgreSQL server directory (postgresql-NN), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    return Path(found[-1]).parent if found else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self) -> dict[str, int]:
        return {"user": UNPRIVILEGED, "group": UNPRIVILEGED} if os.geteuid() == 0 else {}

    def init(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(mode=0o700)
        (self.root / "run").mkdir()
        if os.geteuid() == 0:
            for path in (self.root, self.data, self.root / "run"):
                os.chown(path, UNPRIVILEGED, UNPRIVILEGED)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--locale=C.UTF-8",
             "-E", "UTF8", "--auth-local=trust", "--auth-host=trust", "--no-sync"],
            check=True, capture_output=True, cwd=self.root, **self._as_owner(),
        )  # fmt: skip
        self._tls()
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            f"local all all trust\nhost all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        return self

    @property
    def ca(self) -> Path:
        """The CA that signed the server's certificate (for 127.0.0.1 and localhost)."""
        return self.root / "ca.pem"

    def _tls(self) -> None:
        """TLS offered (ssl = on) with a certificate from a throwaway CA: clients choose
        (libpq's sslmode), so the receiver's TLS options can be tried for real."""
        import trustme

        authority = trustme.CA()
        authority.cert_pem.write_to_path(str(self.ca))
        server = authority.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.data / "server.crt"))
        server.private_key_pem.write_to_path(str(self.data / "server.key"))
        (self.data / "server.key").chmod(0o600)
        if os.geteuid() == 0:
            for name in ("server.crt", "server.key"):
                os.chown(self.data / name, UNPRIVILEGED, UNPRIVILEGED)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")

    def start(self) -> Cluster:
        self.port = self.port or _free_port()
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root / 'run'}",
             "-c", "max_connections=400", "-c", "fsync=off", "-c", "full_page_writes=off",
             "-c", "shared_buffers=64MB"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115
            cwd=self.root, **self._as_owner(),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start within 30 s: {self.log()}")

    def stop(self, fast: bool = True) -> None:
        """Stop the server: fast (SIGINT: connections cut, then a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2 if fast else 15)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A database's URL; without TLS, as most tests need none (one test checks it)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [str(self.bin.parent / "bin" / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout

    def new_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(self.names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def throwaway_cluster() -> Cluster:
    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError(
            "PostgreSQL's server is not installed (Debian: apt-get install postgresql);"
            " the receiver's tests run against it. To run only SQLite's:"
            " LOGMEND_TEST_ENGINES=sqlite"
        )
    root = Path(tempfile.mkdtemp(prefix="logmend-pg-"))
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
    return Cluster(binaries, root / "cluster").init().start()
