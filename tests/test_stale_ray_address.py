"""A Ray head that died without `ray stop` leaves its address in Ray's
ray_current_cluster file; rayssl commands must not retry it for minutes."""

from __future__ import annotations

import socket

import pytest

from rayssl.raystart import _ray_address_file, stale_ray_address


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch):
    """A private Ray temp dir (RAY_TMPDIR), so the machine's own file is not touched."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    assert _ray_address_file() == tmp_path / "ray" / "ray_current_cluster"
    return tmp_path / "ray" / "ray_current_cluster"


def test_a_dead_address_is_stale(ray_tmp):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp.write_text(f"127.0.0.1:{port}\n")
    assert stale_ray_address() == f"127.0.0.1:{port}"


def test_a_live_address_a_missing_file_or_ray_address_is_not(ray_tmp, monkeypatch):
    assert stale_ray_address() is None  # no file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ray_tmp.write_text(f"127.0.0.1:{s.getsockname()[1]}")
        assert stale_ray_address() is None  # something answers there
    ray_tmp.write_text("127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert stale_ray_address() is None  # the user chose
    monkeypatch.delenv("RAY_ADDRESS")
    ray_tmp.write_text("garbage")
    assert stale_ray_address() is None
