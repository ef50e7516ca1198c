"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary directory, ``postgres`` on a free loopback
port with password (SCRAM) authentication, removed at the end. The binaries are Debian's (scripts/setup-postgres
installs them; scripts/test runs it) or any ``initdb`` on PATH.

PostgreSQL refuses to run as root: as root, both run as the ``postgres`` user (Debian's package creates it), or
``nobody``, owning the cluster's directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql

from tests.services import free_port, wait_for_port

SUPERUSER = "postgres"


def server_bin_dir() -> Path:
    """Where initdb and postgres are: the newest /usr/lib/postgresql/<version>/bin, else initdb's on PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = debian[-1] if debian else shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL's initdb is missing: run scripts/setup-postgres (scripts/test does)")
    return Path(found).resolve().parent


def unprivileged_user() -> str | None:
    """The user to run the cluster as: None (this one) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL as")


class PostgresServer:
    """One cluster, superuser ``postgres`` with a random password, listening on 127.0.0.1 only."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.bin = server_bin_dir()
        self.user = unprivileged_user()
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> None:
        # Not under pytest's basetemp: that is private to root (0700), and the cluster's user must reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="pull-events-postgres-"))
        data, pwfile = self.root / "data", self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb(data, pwfile)
            self._start_postgres(data)
            self._wait_until_ready()
        except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as exc:
            output = getattr(exc, "stderr", None) or b""
            log = self.root / "postgres.log"
            details = (output + (log.read_bytes() if log.exists() else b""))[-4000:].decode(errors="replace")
            self.stop()
            raise RuntimeError(f"{exc}: {details}") from None

    def _initdb(self, data: Path, pwfile: Path) -> None:
        subprocess.run(
            [
                str(self.bin / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            ],
            cwd=self.root, check=True, capture_output=True, **self._run_as(),
        )  # fmt: skip

    def _start_postgres(self, data: Path) -> None:
        self.log = (self.root / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                "-c", f"listen_addresses={self.host}",
                # No Unix socket: its default directory (/var/run/postgresql) may be missing or not writable.
                "-c", "unix_socket_directories=",
                # A throwaway cluster: durability buys nothing here and costs every commit a flush.
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True, **self._run_as(),
        )  # fmt: skip

    def _wait_until_ready(self, timeout: float = 60.0) -> None:
        """Until a session opens: the port listens while the cluster is still starting up (and refusing sessions)."""
        wait_for_port(self.port, self.process, timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            try:
                self.connect(connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no session on 127.0.0.1:{self.port} after {timeout}s: {exc}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: it ends open sessions instead of waiting for them (SIGTERM).
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if getattr(self, "log", None):
            self.log.close()
        if getattr(self, "root", None):
            shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, dbname: str = "postgres", connect_timeout: int = 10) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=dbname,
            connect_timeout=connect_timeout,
        )

    def dagster_env(self, dbname: str) -> dict[str, str]:
        """The environment deploy/dagster/dagster.yaml reads its storage connection from, for ``dbname`` here."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": SUPERUSER,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": dbname,
        }

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new, empty database, dropped afterwards (with whatever sessions are still on it)."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with self.admin_cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            with self.admin_cursor() as cursor:
                cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextmanager
    def admin_cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor on the postgres database, in autocommit mode."""
        connection = self.connect()
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
