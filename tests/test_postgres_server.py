"""The tests' throwaway PostgreSQL cluster: password authentication, never run as root, and nothing left behind."""

from __future__ import annotations

import os
import pwd
import socket

import psycopg2
import pytest

from tests.postgres_server import SUPERUSER, PostgresServer


def test_the_cluster_runs_unprivileged_demands_its_password_and_leaves_nothing_when_stopped() -> None:
    server = PostgresServer()
    with server:
        # As root, the cluster's user (postgres or nobody); otherwise this user.
        expected = pwd.getpwnam(server.user).pw_uid if server.user else os.geteuid()
        assert os.stat(f"/proc/{server.process.pid}").st_uid == expected != 0
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host=server.host, port=server.port, user=SUPERUSER, password="wrong", dbname="postgres")
        with server.database() as name:
            connection = server.connect(name)
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_database(), current_user")
                assert cursor.fetchone() == (name, SUPERUSER)
            # A session still open when the database is dropped: the drop ends it instead of failing.
        with server.admin_cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert cursor.fetchone() == (0,)
        connection.close()
        pid, root = server.process.pid, server.root
    assert not os.path.exists(f"/proc/{pid}")
    assert not root.exists()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((server.host, server.port), timeout=2):
        pass


def test_a_cluster_that_cannot_start_says_why_and_leaves_nothing() -> None:
    server = PostgresServer()
    with socket.socket() as taken:
        taken.bind((server.host, server.port))
        taken.listen()
        with pytest.raises(RuntimeError, match="could not bind"):
            server.start()
    assert server.process is None
    assert not server.root.exists()
