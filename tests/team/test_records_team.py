"""Partition records, promotion history and promotion locks in team mode (real PostgreSQL and
SeaweedFS): two "hosts" are two StatePlaces with different homes on the same database and
bucket, and what one records the other sees and agrees with."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.ops.partitions import PartitionRecords, list_partitions, to_do
from lstmpipe.lib.registry.history import Action, HistoryRow, Outcome, PromotionHistory
from lstmpipe.lib.registry.locks import promotion_lock
from lstmpipe.lib.sources.bucket import mirror
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import parse_s3
from tests.team.conftest import Team, s3_client

pytestmark = pytest.mark.integration
MODEL = "m"


def host(team: Team, home: Path) -> StatePlaces:
    """A driver: its own home, the team's database and bucket."""
    return StatePlaces(str(home), team.database, team.store, retry_s=30.0)


def hosts(team: Team, tmp_path: Path) -> tuple[StatePlaces, StatePlaces]:
    return host(team, tmp_path / "host-a"), host(team, tmp_path / "host-b")


def upload_archive(team: Team, tmp_path: Path) -> str:
    """s3://.../archive: a folder partition, a tar, a month, an undated one, and what is none."""
    tar = tmp_path / "2026-11-20.tar"
    (tmp_path / "e.mp4").write_bytes(b"e" * 100)
    with tarfile.open(tar, "w") as archive:
        archive.add(tmp_path / "e.mp4", "shrink/e.mp4")
    objects = {
        "2026-11-19/grow/a.mp4": b"a" * 300,
        "2026-11-19/shrink/b.mp4": b"b" * 200,
        "2026-11-20.tar": tar.read_bytes(),
        "2026-12/grow/c.mp4": b"c" * 50,
        "misc/d.mp4": b"d" * 10,
        ".staging/x.mp4": b"x",  # hidden: no partition
        "labels.csv": b"series_id,label\n",  # a file at the top: no partition
    }
    bucket, prefix = parse_s3(team.store)
    client = s3_client(team.servers.env)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/archive/{key}", Body=body)
    return f"{team.store}/archive/"  # as a user types it: a trailing slash


def test_partition_records_written_by_one_host_are_done_for_the_other(
    team: Team, tmp_path: Path
) -> None:
    url = upload_archive(team, tmp_path)
    a, b = hosts(team, tmp_path)
    found = list_partitions(url, a.retry_s)
    assert [(p.name, p.entries) for p in found] == [
        ("2026-11-19", ("2026-11-19",)),
        ("2026-11-20", ("2026-11-20.tar",)),
        ("2026-12", ("2026-12",)),
        ("misc", ("misc",)),
    ]
    # the mirror (what discovery reads) holds the same partitions
    mirrored = mirror(url.rstrip("/"), tmp_path / "host-a" / "mirror", a.retry_s)
    assert [p.name for p in list_partitions(mirrored.root)] == [p.name for p in found]

    on_a, on_b = PartitionRecords.at(a), PartitionRecords.at(b)
    for part in to_do(url, on_a, "r1", every=True).pending[:2]:
        record = on_a.mark_done(url, part, "r1", series=2, failed=0, run_id="night-a")
        assert record.root == url.rstrip("/")  # the bucket's name, never a host's mirror path
    # host b, other home, no mirror of its own: the same fingerprints, so the two are done
    assert [p.name for p in to_do(url.rstrip("/"), on_b, "r1", every=True).pending] == [
        "2026-12",
        "misc",
    ]
    assert [(r.partition, r.run_id) for r in on_b.records(url, "r1")] == [
        ("2026-11-19", "night-a"),
        ("2026-11-20", "night-a"),
    ]

    bucket, prefix = parse_s3(team.store)
    client = s3_client(team.servers.env)
    # the same bytes uploaded again (a new LastModified, the same ETag): still done
    time.sleep(1.1)
    client.put_object(Bucket=bucket, Key=f"{prefix}/archive/2026-11-19/grow/a.mp4", Body=b"a" * 300)
    assert "2026-11-19" not in [p.name for p in to_do(url, on_b, "r1", every=True).pending]
    # changed content, the same size: pending again on both hosts
    client.put_object(Bucket=bucket, Key=f"{prefix}/archive/2026-11-19/grow/a.mp4", Body=b"A" * 300)
    for records in (on_a, on_b):
        assert [p.name for p in to_do(url, records, "r1", every=True).pending][0] == "2026-11-19"


def test_an_empty_prefix_is_a_usage_error_naming_it(team: Team) -> None:
    with pytest.raises(ConfigError, match="no objects under this prefix"):
        list_partitions(f"{team.store}/nothing-here", 5.0)


def test_history_written_on_one_host_is_read_on_the_other(team: Team, tmp_path: Path) -> None:
    a, b = hosts(team, tmp_path)
    row = HistoryRow(
        time="2026-12-04T12:00:00+00:00",
        model=MODEL,
        action=Action.PROMOTE,
        decision=Outcome.PROMOTED,
        challenger_version="2",
        champion_after="2",
        challenger_macro_f1=0.8125,
        p_value=1.234567890123e-7,  # double precision on PostgreSQL too
        checks="{}",
    )
    PromotionHistory.at(a).append(row)
    PromotionHistory.at(b).append(
        HistoryRow(time="t", model="other", action=Action.ROLLBACK, decision=Outcome.ROLLED_BACK)
    )
    (stored,) = PromotionHistory.at(b).read(MODEL)
    assert stored == HistoryRow(**{**row.__dict__, "id": stored.id})
    assert [r.model for r in PromotionHistory.at(a).read()] == [MODEL, "other"]


def _promote(home: str, database: str, challenger: str, started: float) -> str:
    """A promotion as promotion.promote does it, on a host of its own: under the model's lock,
    read the champion, take time to score, then record. Two identical challengers: the gate
    refuses one that is no better than the champion, so a serialised pair promotes one."""
    history = PromotionHistory.at(StatePlaces(home, database, retry_s=30.0))
    while time.time() < started:  # both processes start their promotion together
        time.sleep(0.01)
    with promotion_lock(history.db, MODEL):
        rows = history.read(MODEL)
        champion = rows[-1].champion_after if rows else None
        time.sleep(1.0)  # scoring: without the lock the other reads the same champion meanwhile
        promoted = champion is None
        history.append(
            HistoryRow(
                time=str(time.time()),
                model=MODEL,
                action=Action.PROMOTE,
                decision=Outcome.PROMOTED if promoted else Outcome.REJECTED,
                challenger_version=challenger,
                champion_version=champion,
                champion_after=challenger if promoted else champion,
            )
        )
    return challenger


def test_two_hosts_promoting_one_model_at_once_leave_one_champion(
    team: Team, tmp_path: Path
) -> None:
    spawn = multiprocessing.get_context("spawn")
    started = time.time() + 8.0  # after both interpreters have imported lstmpipe
    with spawn.Pool(2) as pool:
        done = pool.starmap(
            _promote,
            [(str(tmp_path / f"host-{v}"), team.database, v, started) for v in ("2", "3")],
        )
    assert sorted(done) == ["2", "3"]
    rows = PromotionHistory.at(host(team, tmp_path / "reader")).read(MODEL)
    decisions = sorted((r.decision, r.challenger_version, r.champion_version) for r in rows)
    (winner,) = [v for d, v, _ in decisions if d == Outcome.PROMOTED]
    (loser,) = {"2", "3"} - {winner}
    # the second waited for the lock and met the first as champion
    assert decisions == sorted(
        [(Outcome.PROMOTED, winner, None), (Outcome.REJECTED, loser, winner)]
    )
    assert rows[-1].champion_after == winner


def _hold_lock(home: str, database: str, ready: str) -> None:
    history = PromotionHistory.at(StatePlaces(home, database, retry_s=30.0))
    with promotion_lock(history.db, MODEL):
        Path(ready).touch()
        time.sleep(600)


def test_a_killed_promotion_leaves_the_model_unlocked(team: Team, tmp_path: Path) -> None:
    """The lock is the holder's database session: while it lives another host waits; SIGKILL
    ends the session, and the waiting host proceeds."""
    ready = tmp_path / "holding"
    holder = multiprocessing.get_context("spawn").Process(
        target=_hold_lock, args=(str(tmp_path / "host-a"), team.database, str(ready))
    )
    holder.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert holder.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    _, b = hosts(team, tmp_path)
    got = threading.Event()

    def wait_for_lock() -> None:
        with promotion_lock(b.history_database(), MODEL):
            got.set()

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    assert not got.wait(2.0)  # held by the other host
    os.kill(holder.pid or 0, signal.SIGKILL)
    killed = time.monotonic()
    assert got.wait(30.0), "the lock outlived its killed holder"
    waiter.join()
    print(f"lock free {time.monotonic() - killed:.2f} s after its holder was killed")
