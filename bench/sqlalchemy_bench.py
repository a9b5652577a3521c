"""SQLAlchemy 1.4 on psycopg2 (the original's stack) doing the benchmark's work.

    python3 bench/sqlalchemy_bench.py MODE URL N [READS|ITERATIONS]

    orm_commit   per event: session.add(LedgerEvent(...)); session.commit()
    orm_batch    session.add_all([...N events]); session.commit()
    orm_bulk     session.bulk_insert_mappings(LedgerEvent, rows); session.commit()
    core_read    READS times the SUM(cost)-per-agent query (Core select, one connection)
    pool         ITERATIONS engine.raw_connection() + close() (QueuePool checkout/checkin)
    memory       a warm pool of 10, then the read workload, one connection checkout per query

The events are bench/data.lua's, computed the same way here. Values are made
before the clock starts as the types an application holds (Decimal,
datetime); constructing the ORM objects is timed. Prints one JSON line.
"""
import datetime
import decimal
import json
import sys
import time

from sqlalchemy import BigInteger, Column, DateTime, Numeric, String, create_engine, func, select, bindparam
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Session, declarative_base

Base = declarative_base()


class LedgerEvent(Base):
    __tablename__ = "ledger_events"
    event_id = Column(BigInteger, primary_key=True, autoincrement=True)
    agent_id = Column(UUID(as_uuid=False), nullable=False)
    timestamp = Column(DateTime(timezone=True), nullable=False)
    resource_type = Column(String(255), nullable=False)
    quantity = Column(Numeric(20, 6), nullable=False)
    cost = Column(Numeric(20, 6), nullable=False)
    currency = Column(String(3), nullable=False)
    event_metadata = Column("metadata", JSONB)
    merkle_root_id = Column(UUID(as_uuid=False))


NAGENTS = 16
T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
STEP_US = 1000003
READ_WINDOW = 200


def ts(i):
    return T0 + datetime.timedelta(microseconds=i * STEP_US)


def event(i):
    return dict(
        agent_id="00000000-0000-4000-8000-%012d" % (i % NAGENTS + 1),
        timestamp=ts(i),
        resource_type="api.bench.%d" % (i % 7),
        quantity=decimal.Decimal("%d.%06d" % (i, (i * 7919) % 1000000)),
        cost=decimal.Decimal("0.%06d" % ((i * 37) % 1000000)),
        currency="EUR" if i % 5 == 0 else "USD",
        event_metadata={"seq": i},
    )


def peak_rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def private_kb():
    """Private_Clean + Private_Dirty of this process, in kB (peak RSS also
    counts shared library pages)."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def read_query():
    t = LedgerEvent.__table__
    return (select(t.c.agent_id, func.sum(t.c.cost).label("total"))
            .where(t.c.timestamp >= bindparam("lo"), t.c.timestamp < bindparam("hi"))
            .group_by(t.c.agent_id).order_by(t.c.agent_id))


def read_range(q, n):
    span = n - READ_WINDOW if n > READ_WINDOW else 1
    first = 1 + (q * 7919) % span
    return ts(first), ts(first + READ_WINDOW)


def main():
    mode, url = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    reads = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    pool_size = 10 if mode == "memory" else 1
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, future=True)
    with engine.connect() as c:  # connect before the clock starts
        c.exec_driver_sql("select 1")
    result = {"variant": "sqla_" + mode, "n": n}
    if mode in ("orm_commit", "orm_batch", "orm_bulk"):
        rows = [event(i) for i in range(1, n + 1)]
        t0 = time.perf_counter()
        if mode == "orm_commit":
            with Session(engine) as s:
                for r in rows:
                    s.add(LedgerEvent(**r))
                    s.commit()
        elif mode == "orm_batch":
            with Session(engine) as s:
                s.add_all([LedgerEvent(**r) for r in rows])
                s.commit()
        else:
            with Session(engine) as s:
                s.bulk_insert_mappings(LedgerEvent, rows)
                s.commit()
        t1 = time.perf_counter()
    elif mode in ("core_read", "memory"):
        stmt = read_query()
        total = decimal.Decimal(0)
        if mode == "memory":
            held = [engine.connect() for _ in range(10)]  # warm all ten
            for c in held:
                c.exec_driver_sql("select 1")
                c.close()
        t0 = time.perf_counter()
        if mode == "core_read":
            with engine.connect() as c:
                for q in range(reads):
                    lo, hi = read_range(q, n)
                    for row in c.execute(stmt, {"lo": lo, "hi": hi}):
                        total += row.total
        else:
            for q in range(reads):
                lo, hi = read_range(q, n)
                with engine.connect() as c:
                    for row in c.execute(stmt, {"lo": lo, "hi": hi}):
                        total += row.total
        t1 = time.perf_counter()
        result["n"] = reads
        result["check"] = "%.6f" % total
    elif mode == "pool":
        t0 = time.perf_counter()
        for _ in range(reads):
            c = engine.raw_connection()
            c.close()
        t1 = time.perf_counter()
        result["n"] = reads
    else:
        sys.stderr.write("sqlalchemy_bench: unknown mode %s\n" % mode)
        sys.exit(2)
    result["seconds"] = t1 - t0
    result["rate"] = result["n"] / result["seconds"]
    result["rss_kb"] = peak_rss_kb()
    result["private_kb"] = private_kb()
    engine.dispose()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
