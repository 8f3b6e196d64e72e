"""``devstack.procs.free_port``: ports for the stack's servers, picked where no outgoing
connection can take them before the server binds (below the kernel's ephemeral range)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devstack import procs


@pytest.fixture(autouse=True)
def claims(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test claims ports in its own folder, not the machine's."""
    folder = tmp_path / "claims"
    monkeypatch.setattr(procs, "_PORT_CLAIMS", folder)
    return folder


def test_free_ports_come_from_below_the_ephemeral_range_and_are_bindable() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [procs.free_port() for _ in range(50)]
    assert len(ports) == 50
    assert all(20000 <= p < min(low, 32768) for p in ports), ports
    assert len(set(ports)) > 40  # random, so parallel stacks rarely pick the same one
    with socket.socket() as sock:
        sock.bind((procs.LOOPBACK, ports[0]))  # free right after it was picked


def test_a_taken_port_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind((procs.LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a range of exactly the taken port plus the next 999: only free ones come back
        monkeypatch.setattr(procs, "_LISTEN_PORTS", (port, port + 1000))
        monkeypatch.setattr(procs, "_EPHEMERAL_RANGE", Path("/nonexistent"))
        picked = [procs.free_port() for _ in range(200)]
    assert port not in picked and len(picked) == 200


def test_without_room_below_the_range_the_os_picks(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    narrow = tmp_path / "range"
    narrow.write_text("20500\t60999\n")  # less than 1000 ports below it
    monkeypatch.setattr(procs, "_EPHEMERAL_RANGE", narrow)
    port = procs.free_port()
    assert port >= 20500 or port < 20000  # not from the too-narrow band


def test_a_port_another_process_just_claimed_is_not_handed_out(claims: Path) -> None:
    port = procs.free_port()
    assert (claims / str(port)).exists()
    assert not procs._claim(port)  # a second stack starting now cannot take it


def test_a_claim_older_than_the_claim_time_is_taken_again(claims: Path) -> None:
    assert procs._claim(24680)
    stamp = (claims / "24680").stat().st_mtime
    assert not procs._claim(24680, now=stamp + procs.PORT_CLAIM_S - 1)
    assert procs._claim(24680, now=stamp + procs.PORT_CLAIM_S + 1)
    assert not procs._claim(24680)  # retaken: fresh again


def test_claims_keep_fifty_parallel_picks_apart(claims: Path) -> None:
    ports = [procs.free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and len(list(claims.iterdir())) == 50
