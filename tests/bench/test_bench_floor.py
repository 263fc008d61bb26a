"""The floor measurements: echo over real processes, SQLite, sha256, crypto and memory helpers."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from bench.floor import (
    CLIENT_IDENTITY,
    ECHO_METHOD,
    EchoChain,
    FloorSettings,
    RssSampler,
    cpu_seconds,
    crypto_floors,
    drive,
    echo_floor,
    nearest_rank,
    peak_rss_bytes,
    rss_bytes,
    sha256_chain_floor,
    sqlite_copy_floor,
    sqlite_insert_floor,
    synthetic_duplicate_rows,
    synthetic_records,
)

TINY = FloorSettings(
    rounds=1,
    round_seconds=0.3,
    max_calls_per_round=200,
    warmup_seconds=0.1,
    latency_calls=20,
    in_flight=8,
)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie waiting for its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return all(_gone(pid) for pid in pids)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CA with the identities of a 2-hop echo chain and the bench client."""
    from linkage import pki

    directory = tmp_path_factory.mktemp("pki")
    pki.init_pki(directory, [*EchoChain.identities(2), CLIENT_IDENTITY])
    return directory


async def test_echo_floor_one_hop_over_mtls_gives_positive_rate(pki_dir: Path) -> None:
    results = {r.key: r for r in await echo_floor(1, TINY, pki_dir=pki_dir)}

    rate = results["echo_one_hop_calls_per_s"]
    assert rate.value > 0
    assert rate.params["transport"] == "mtls"
    assert rate.params["hops"] == 1
    assert 0 < results["echo_one_hop_p50_ms"].value <= results["echo_one_hop_p99_ms"].value
    assert not results["echo_one_hop_p50_ms"].higher_is_better


async def test_chain_relays_through_every_hop_then_stops_its_processes(pki_dir: Path) -> None:
    from linkage import pki

    async with EchoChain(2, pki_dir=pki_dir) as chain:
        pids = chain.pids
        assert len(pids) == 2
        assert len(set(chain.ports)) == 2
        assert not any(_gone(pid) for pid in pids)
        creds = pki.channel_credentials(pki_dir, CLIENT_IDENTITY)
        async with grpc.aio.secure_channel(chain.address, creds) as channel:
            call = channel.unary_unary(ECHO_METHOD, None, None)
            assert await call(b"x" * 1024, timeout=10) == b"x" * 1024

    assert all(_gone(pid) for pid in pids)
    assert multiprocessing.active_children() == []


async def test_chain_refuses_a_client_without_a_certificate(pki_dir: Path) -> None:
    async with (
        EchoChain(1, pki_dir=pki_dir) as chain,
        grpc.aio.insecure_channel(chain.address) as channel,
    ):
        call = channel.unary_unary(ECHO_METHOD, None, None)
        with pytest.raises(grpc.aio.AioRpcError):
            await call(b"x", timeout=5)


def test_chain_servers_exit_when_the_bench_process_dies() -> None:
    script = (
        "import asyncio, os\n"
        "from bench.floor import EchoChain\n"
        "async def main():\n"
        "    chain = EchoChain(2)\n"
        "    await chain.start()\n"
        "    print(' '.join(map(str, chain.pids)), flush=True)\n"
        "    os._exit(3)\n"  # no clean-up at all, as if killed
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert _wait_gone(pids, within=10)


def test_chain_needs_a_hop() -> None:
    with pytest.raises(ValueError, match="at least one hop"):
        EchoChain(0)


def test_sqlite_floor_with_default_and_custom_row_shapes(tmp_path: Path) -> None:
    default = sqlite_insert_floor(tmp_path / "a", synthetic_duplicate_rows(2_000), rounds=1)
    assert default.value > 0
    assert default.params["unique_key_columns"] == 4
    assert default.params["columns"] == 8

    custom = [(f"k{i}", i, b"v" * 10) for i in range(500)]
    result = sqlite_insert_floor(tmp_path / "b", custom, rounds=2, batch=100)
    assert result.value > 0
    assert len(result.rounds) == 2
    assert result.params["unique_key_columns"] == 0


def test_copy_floor_reinserts_the_very_rows_into_the_same_table(tmp_path: Path) -> None:
    import sqlite3

    source = tmp_path / "source.sqlite"
    with sqlite3.connect(source) as connection:
        connection.execute("CREATE TABLE dup (id INTEGER PRIMARY KEY, k TEXT, v BLOB, UNIQUE (k))")
        connection.execute("CREATE INDEX ix_dup_v ON dup (v)")
        connection.executemany(
            "INSERT INTO dup (k, v) VALUES (?, ?)",
            [(f"k{i}", bytes([i % 256]) * 40) for i in range(500)],
        )
    connection.close()

    result = sqlite_copy_floor(source, "dup", tmp_path / "copies", rounds=2)

    assert result.key == "sqlite_same_rows_per_s"
    assert result.value > 0
    assert len(result.rounds) == 2
    assert (result.params["rows"], result.params["columns"], result.params["indexes"]) == (
        500,
        3,
        1,
    )
    with sqlite3.connect(tmp_path / "copies" / "copy0.sqlite") as copy:
        assert copy.execute("SELECT count(*), count(DISTINCT k) FROM dup").fetchone() == (500, 500)
        names = {name for (name,) in copy.execute("SELECT name FROM sqlite_master")}
    copy.close()
    assert "ix_dup_v" in names
    with pytest.raises(ValueError, match="no table"):
        sqlite_copy_floor(source, "missing", tmp_path / "copies")


def test_synthetic_rows_are_deterministic_and_unique_by_key() -> None:
    rows = synthetic_duplicate_rows(1_000)
    assert rows == synthetic_duplicate_rows(1_000)
    assert len({row[:4] for row in rows}) == len(rows)
    assert all(len(row[6]) == 120 for row in rows)


def test_sha256_floor_can_name_its_figure() -> None:
    result = sha256_chain_floor([b"a" * 300] * 100, rounds=1, key="sha256_same_records_per_s")
    assert (result.key, result.params["records"]) == ("sha256_same_records_per_s", 100)


def test_sha256_floor_over_given_records() -> None:
    result = sha256_chain_floor(synthetic_records(1_000), rounds=1)
    assert result.value > 0
    assert result.params == {"records": 1_000, "mean_record_bytes": 300}


def test_crypto_floors_are_positive() -> None:
    results = {r.key: r.value for r in crypto_floors(ops=20, rounds=1)}
    assert set(results) == {
        "sealedbox_encrypt_per_s",
        "box_encrypt_per_s",
        "ed25519_sign_per_s",
        "ed25519_verify_per_s",
    }
    assert all(value > 0 for value in results.values())


async def test_memory_helpers_read_this_process() -> None:
    assert peak_rss_bytes() >= rss_bytes() > 0
    async with RssSampler([os.getpid()], interval=0.01) as sampler:
        await asyncio.sleep(0.1)
    trend = sampler.trend(os.getpid(), warmup_seconds=0)
    assert trend is not None
    assert trend.early_bytes > 0
    assert trend.samples >= 4


def test_cpu_seconds_grow_with_work_in_this_and_another_process() -> None:
    before = cpu_seconds()
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds() > before
    assert cpu_seconds(1) >= 0  # another process, read from /proc


async def test_drive_is_bounded_by_count_and_by_time() -> None:
    async def instant() -> None:
        await asyncio.sleep(0)

    done, _ = await drive(instant, in_flight=8, max_calls=100, max_seconds=10)
    assert done == 100

    async def slow() -> None:
        await asyncio.sleep(0.05)

    done, elapsed = await drive(slow, in_flight=4, max_calls=10_000, max_seconds=0.2)
    assert elapsed < 1
    assert 4 <= done <= 40


async def test_drive_stops_at_the_first_failure() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await drive(failing, in_flight=4, max_calls=1_000, max_seconds=5)
    assert calls <= 4


def test_nearest_rank_quantiles() -> None:
    values = [float(v) for v in range(1, 301)]
    assert nearest_rank(values, 0.5) == 150
    assert nearest_rank(values, 0.99) == 297
    assert nearest_rank([7.0], 0.99) == 7
