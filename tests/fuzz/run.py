"""Bounded fuzz pass: random and adversarial input into ragtune's type input, binary receive,
aggregate states, typmods and casts, as an unprivileged role, asserting that no backend
ever crashed (same postmaster PID, no "terminated by signal" in the server log).

Cases are sent pipelined (one Sync per statement, so each one fails on its own) over one
connection; every case must come back as rows or as an ERROR. Prints TAP lines
("1..N", then "ok - ..." / "not ok - ...") that scripts/test.sh counts.

To fuzz another parser, add a generator to GENERATORS: a function of a random.Random that
returns a Case (SQL text, parameter values, and optionally parameter type OIDs and formats).
Keep results small (wrap values in length(...::text) or similar): the pipeline holds a whole
batch of results.
"""

import argparse
import collections
import math
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import pq

TEXT, BINARY = 0, 1
MAX_DIM = 16_000


@dataclass
class Case:
    sql: str
    params: list = field(default_factory=list)  # bytes, str or None each
    types: list | None = None  # parameter type OIDs (0: inferred from the SQL)
    formats: list | None = None  # TEXT or BINARY per parameter


OIDS = {}  # filled at start: "vector", "halfvec"

# -- building blocks ------------------------------------------------------------------------

SPECIAL_DIMS = [0, 1, 2, 3, 15_999, 16_000, 16_001, 16_002, 32_767, 32_768, 32_769, 32_770, 65_535, 65_536, 100_000]
NUMBER_TOKENS = [
    "0", "-0", "1", "-1", "1.5", "3.4028235e38", "-3.4028235e38", "3.4028236e38", "3.5e38", "1e39",
    "1e-45", "1e-46", "1.4e-45", "65504", "65519", "65520", "-65520", "6e-8", "5.96e-8", "1e-8",
    "NaN", "nan", "-NaN", "inf", "-inf", "Infinity", "-Infinity", "+infinity", "INF", "1e99999",
    "-1e99999", "1e-99999", "0x10", "1.", ".5", ".", "+", "-", "e5", "1e", "1e+", "1.2.3", "--1",
    "9" * 400, "0." + "0" * 400 + "1", "1" + "0" * 39, "2147483648", "1_000", "١", "¹",
]
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "  ", "\u00a0", "\u2003", ""]
FLOAT8_TOKENS = [
    "0", "1", "-1", "2", "1e308", "-1e308", "1.7976931348623157e308", "5e-324", "NaN", "Infinity",
    "-Infinity", "3.4028235e38", "1e39", "65520", "-0", "NULL",
]
INT_EDGES = [0, 1, -1, 2, 3, 16_000, 16_001, 32_767, 32_768, 65_535, -32_768, 2**31 - 1, -(2**31), 2**31 - 2]


def rand_bytes_text(rng, n):
    """Random characters (control characters, brackets, digits, non-ASCII), never NUL."""
    alphabet = "[],.-+eE0123456789 \t\n{}naifNAIF\x01\x7f\u00ff\u2003\U0001f600'\"\\"
    if rng.random() < 0.5:
        return "".join(rng.choice(alphabet) for _ in range(n))
    return bytes(rng.randrange(1, 256) for _ in range(n)).decode("latin-1")


def dim_choice(rng, small=24):
    if rng.random() < 0.85:
        return rng.randrange(0, small)
    return rng.choice(SPECIAL_DIMS)


def number_token(rng):
    r = rng.random()
    if r < 0.4:
        return rng.choice(NUMBER_TOKENS)
    if r < 0.7:
        return repr(rng.uniform(-1e6, 1e6))
    if r < 0.85:
        return repr(struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0])
    return f"{rng.choice(['', '-'])}{rng.randrange(10)}e{rng.randrange(-60, 60)}"


def vector_text(rng):
    """Mostly well-formed text with adversarial numbers, spaces and lengths; sometimes raw noise."""
    r = rng.random()
    if r < 0.15:
        return rand_bytes_text(rng, rng.randrange(0, 40))
    dim = dim_choice(rng)
    if dim > 64:  # big inputs: cheap to build, same token repeated
        token = rng.choice(["0", "1", "1e-45", "65504", "NaN"])
        return "[" + ",".join([token] * dim) + "]"
    sp = lambda: rng.choice(SPACES) if rng.random() < 0.3 else ""
    body = ",".join(sp() + number_token(rng) + sp() for _ in range(dim))
    text = sp() + "[" + body + "]" + sp()
    if r < 0.35 and text:  # mutate: delete, duplicate or replace one character
        i = rng.randrange(len(text))
        op = rng.randrange(3)
        text = text[:i] + (text[i] * 2 if op == 0 else rng.choice("[],e.-x ") if op == 1 else "") + text[i + 1 :]
    return text.replace("\x00", "")


def element_bytes(rng, size):
    """Big-endian element bytes: random bits, NaN/inf patterns, limits, or ordinary values."""
    r = rng.random()
    if size == 4:
        if r < 0.3:
            return rng.getrandbits(32).to_bytes(4, "big")
        if r < 0.45:
            return rng.choice([0x7FC00000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x80000000]).to_bytes(4, "big")
        return struct.pack(">f", rng.uniform(-100, 100))
    if r < 0.3:
        return rng.getrandbits(16).to_bytes(2, "big")
    if r < 0.45:
        return rng.choice([0x7E00, 0x7C00, 0xFC00, 0x7BFF, 0x0001, 0x8000]).to_bytes(2, "big")
    return struct.pack(">e", rng.uniform(-100, 100))


def binary_vector(rng, size):
    """pgvector's wire format (int16 dim, int16 unused, elements), bent in every field."""
    dim = rng.choice([rng.randrange(0, 8), rng.choice(SPECIAL_DIMS), rng.randrange(-32768, 32768)])
    dim_field = dim if -32768 <= dim < 32768 else rng.randrange(-32768, 32768)
    unused = 0 if rng.random() < 0.85 else rng.randrange(-32768, 32768)
    n = max(dim_field, 0)
    r = rng.random()
    if r < 0.7:
        count = min(n, 64)  # most long claims come with too few bytes
    elif r < 0.85:
        count = n + rng.randrange(-2, 3)
    else:
        count = rng.randrange(0, 10)
    count = max(0, min(count, MAX_DIM + 10))
    if count > 64:
        body = element_bytes(rng, size) * count
    else:
        body = b"".join(element_bytes(rng, size) for _ in range(count))
    data = struct.pack(">hh", dim_field, unused) + body
    if rng.random() < 0.1:
        data = data[: rng.randrange(0, len(data) + 1)]
    if rng.random() < 0.05:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 24)))
    return data


def float8_array_text(rng):
    """Aggregate-state-like arrays: odd shapes, NULLs, non-finite counts, wrong lengths."""
    r = rng.random()
    if r < 0.08:
        return rng.choice(["{}", "{{}}", "{NULL}", "{{1,2},{3,4}}", "{{{1}}}", "[0:2]={1,2,3}", "[-5:-4]={0,1}", "[2:2]={0}"])
    n = rng.randrange(1, 8)
    tokens = [rng.choice(FLOAT8_TOKENS) if rng.random() < 0.3 else repr(rng.uniform(-10, 10)) for _ in range(n)]
    if rng.random() < 0.6:
        tokens[0] = rng.choice(["0", "1", "2", "3", "-1", "NaN", "Infinity", "1e308", "0.5"])
    text = "{" + ",".join(tokens) + "}"
    if r > 0.95:
        text = "{" + text + "," + text + "}" if rng.random() < 0.5 else "[0:" + str(n - 1) + "]=" + text
    return text


# -- generators -----------------------------------------------------------------------------


def gen_text_input(rng):
    t = rng.choice(["vector", "halfvec"])
    return Case("SELECT length($1::text)", [vector_text(rng)], [OIDS[t]], [TEXT])


def gen_text_typmod(rng):
    t = rng.choice(["vector", "halfvec"])
    n = rng.choice([1, 2, 3, 16_000])
    return Case(f"SELECT length($1::text::{t}({n})::text)", [vector_text(rng)])


def gen_binary_receive(rng):
    t = rng.choice(["vector", "halfvec"])
    return Case("SELECT length($1::text)", [binary_vector(rng, 4 if t == "vector" else 2)], [OIDS[t]], [BINARY])


def gen_binary_array_receive(rng):
    """vector[] in binary: array_recv calls the element receive function for each element."""
    t = rng.choice(["vector", "halfvec"])
    size = 4 if t == "vector" else 2
    elements = [binary_vector(rng, size) for _ in range(rng.randrange(1, 4))]
    element_oid = OIDS[t]
    header = struct.pack(">iiI", 1, 0, element_oid) + struct.pack(">ii", len(elements), 1)
    body = b"".join(struct.pack(">i", len(e)) + e for e in elements)
    return Case("SELECT cardinality($1)", [header + body], [OIDS[t + "[]"]], [BINARY])


def gen_aggregate_state(rng):
    t = rng.choice(["vector", "halfvec"])
    kind = rng.randrange(3)
    if kind == 0:
        return Case(f"SELECT length({t}_avg($1::float8[])::text)", [float8_array_text(rng)])
    if kind == 1:
        return Case(f"SELECT {t}_accum($1::float8[], $2::{t})::text", [float8_array_text(rng), vector_text(rng)])
    return Case("SELECT vector_combine($1::float8[], $2::float8[])::text", [float8_array_text(rng), float8_array_text(rng)])


def gen_big_aggregate_state(rng):
    """States with thousands of sums built server-side (the int16-overflow crash was here)."""
    t = rng.choice(["vector", "halfvec"])
    count = rng.choice(["0", "1", "2", "-1", "NaN", "Infinity", "1e308"])
    sums = str(rng.choice(SPECIAL_DIMS + [rng.randrange(0, 70_000)]))
    fill = "array_prepend($1::float8, array_fill($2::float8, ARRAY[$3::int]))"
    value = rng.choice(["1", "0", "-1e308", "1e308", "NaN"])
    kind = rng.randrange(3)
    if kind == 0:  # printing reads every element (vector_dims alone reads only the header)
        return Case(f"SELECT length({t}_avg({fill})::text)", [count, value, sums])
    if kind == 1:
        return Case(f"SELECT cardinality({t}_accum({fill}, $4::{t}))", [count, value, sums, vector_text(rng)])
    other = rng.choice(["{0}", "{1,2}", "{1,2,3}", "{}"])
    args = f"{fill}, $4::float8[]" if rng.random() < 0.5 else f"$4::float8[], {fill}"
    return Case(f"SELECT cardinality(vector_combine({args}))", [count, value, sums, other])


def gen_array_cast(rng):
    t = rng.choice(["vector", "halfvec"])
    element = rng.choice(["int", "real", "float8", "numeric"])
    if rng.random() < 0.2:
        n = str(rng.choice(SPECIAL_DIMS))
        token = rng.choice(["0", "1", "1e39", "70000", "NaN"])
        return Case(f"SELECT vector_dims(array_fill($1::{element}, ARRAY[$2::int])::{t})", [token, n])
    tokens = [rng.choice(FLOAT8_TOKENS + ["1e400", "2147483648", "1.5"]) for _ in range(rng.randrange(0, 6))]
    text = "{" + ",".join(tokens) + "}"
    if rng.random() < 0.1:
        text = "{" + text + "," + text + "}"
    return Case(f"SELECT length($1::{element}[]::{t}::text)", [text])


def gen_typmod(rng):
    t = rng.choice(["vector", "halfvec"])
    mod = rng.choice([str(rng.choice(INT_EDGES)), "1,2", "'a'", "1.5", "-1", "1,2,3", "16000"])
    return Case(f"SELECT length(NULL::{t}({mod})::text)")


def gen_typmod_function(rng):
    src, dst = rng.choice([("vector", "vector"), ("halfvec", "halfvec"), ("vector", "halfvec"), ("halfvec", "vector")])
    func = dst if src == dst else f"{src}_to_{dst}"
    return Case(f"SELECT length({func}($1::{src}, $2::int, $3::bool)::text)", [vector_text(rng), str(rng.choice(INT_EDGES)), "true"])


def gen_operators(rng):
    t = rng.choice(["vector", "halfvec"])
    op = rng.choice(["+", "-", "*", "||", "<->", "<#>", "<=>", "<+>", "<", "="])
    return Case(f"SELECT length(($1::{t} {op} $2::{t})::text)", [vector_text(rng), vector_text(rng)])


def gen_big_concat(rng):
    t = rng.choice(["vector", "halfvec"])
    a = rng.choice([1, 8_000, 8_001, 15_999, 16_000])
    b = rng.choice([1, 8_000, 8_001, 16_000])
    sql = f"SELECT length((array_fill(1::real, ARRAY[$1::int])::{t} || array_fill(1::real, ARRAY[$2::int])::{t})::text)"
    return Case(sql, [str(a), str(b)])


def gen_functions(rng):
    t = rng.choice(["vector", "halfvec"])
    kind = rng.randrange(4)
    if kind == 0:
        return Case(f"SELECT length(subvector($1::{t}, $2::int, $3::int)::text)", [vector_text(rng), str(rng.choice(INT_EDGES)), str(rng.choice(INT_EDGES))])
    if kind == 1:
        return Case(f"SELECT length(l2_normalize($1::{t})::text)", [vector_text(rng)])
    if kind == 2:
        return Case(f"SELECT length(binary_quantize($1::{t}))", [vector_text(rng)])
    return Case(f"SELECT vector_dims($1::{t}), vector_norm($1::{t}::vector), ($1::{t})::real[] IS NULL", [vector_text(rng)])


# (generator, weight): the share of cases each one gets.
GENERATORS = [
    (gen_text_input, 20),
    (gen_text_typmod, 5),
    (gen_binary_receive, 20),
    (gen_binary_array_receive, 5),
    (gen_aggregate_state, 15),
    (gen_big_aggregate_state, 3),
    (gen_array_cast, 8),
    (gen_typmod, 3),
    (gen_typmod_function, 5),
    (gen_operators, 8),
    (gen_big_concat, 1),
    (gen_functions, 7),
]

# -- running ------------------------------------------------------------------------------


def encode(value):
    return None if value is None else value if isinstance(value, bytes) else value.encode()


def run_batch(conn, cases, outcomes):
    """Sends every case with its own Sync, then reads each outcome; False if the link broke."""
    for case in cases:
        n = len(case.params)
        conn.send_query_params(
            case.sql.encode(), [encode(p) for p in case.params], case.types or [0] * n, case.formats or [TEXT] * n
        )
        conn.pipeline_sync()
    for case in cases:
        status = None
        while True:
            result = conn.get_result()
            if result is None:
                if conn.status != pq.ConnStatus.OK:
                    return False
                continue
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                break
            if status is None:
                if result.status == pq.ExecStatus.TUPLES_OK:
                    status = "rows"
                elif result.status == pq.ExecStatus.FATAL_ERROR:
                    state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"?").decode()
                    status = state
                    if state == "XX000":  # an internal error: a Rust panic or an elog()
                        message = (result.error_message or b"").decode(errors="replace").strip()
                        outcomes["internal"].append((case, message))
                else:
                    status = result.status.name
        outcomes["status"][status] += 1
    return True


def postmaster_pid(pgdata):
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        return int(f.readline())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--user", required=True, help="an unprivileged role")
    parser.add_argument("--pgdata", required=True, help="data directory (postmaster.pid, server.log)")
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"1..5\n# seed {seed} (rerun with --seed {seed})", flush=True)
    rng = random.Random(seed)

    log_path = os.path.join(args.pgdata, "server.log")
    log_start = os.path.getsize(log_path)
    pid_before = postmaster_pid(args.pgdata)
    conninfo = f"host={args.host} port={args.port} dbname={args.dbname} user={args.user}"
    with psycopg.connect(conninfo, autocommit=True) as setup:
        superuser = setup.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        for name in ["vector", "halfvec", "vector[]", "halfvec[]"]:
            OIDS[name] = setup.execute("SELECT %s::regtype::oid", [name]).fetchone()[0]
        started = setup.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

    conn = pq.PGconn.connect(conninfo.encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    # Keeps the log readable and each case bounded in time.
    for setting in ["SET client_min_messages = error", "SET statement_timeout = '10s'"]:
        conn.exec_(setting.encode())
    conn.enter_pipeline_mode()

    generators, weights = zip(*GENERATORS)
    outcomes = {"status": collections.Counter(), "internal": []}
    per_generator = collections.Counter()
    t0 = time.monotonic()
    done, alive = 0, True
    while done < args.cases and alive:
        batch = []
        for gen in rng.choices(generators, weights, k=min(args.batch, args.cases - done)):
            batch.append(gen(rng))
            per_generator[gen.__name__] += 1
        try:
            alive = run_batch(conn, batch, outcomes)
        except psycopg.OperationalError as e:  # the backend went away mid-batch
            print(f"# connection lost: {e}")
            alive = False
        done += len(batch)
    elapsed = time.monotonic() - t0
    conn.finish()

    answered = sum(outcomes["status"].values())
    print(f"# {done} cases in {elapsed:.1f} s ({done / elapsed:.0f}/s) as role {args.user}")
    print("# outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes["status"].most_common()))
    print("# generators: " + ", ".join(f"{k} {v}" for k, v in sorted(per_generator.items())))
    for case, message in outcomes["internal"][:10]:
        print(f"# internal error: {message} <- {case.sql} {[p[:80] if p else p for p in case.params]!r}")

    started_after = None
    for _ in range(20):  # after a crash the server refuses connections while it recovers
        try:
            with psycopg.connect(conninfo, autocommit=True) as after:
                started_after = after.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
            break
        except psycopg.OperationalError:
            time.sleep(0.5)
    with open(log_path, errors="replace") as f:
        f.seek(log_start)
        crashes = [line.rstrip() for line in f if "terminated by signal" in line or "server process (PID" in line
                   or "terminating any other active server processes" in line]
    for line in crashes[:5]:
        print(f"# {line}")

    def check(ok, name):
        print(f"{'ok' if ok else 'not ok'} - {name}")

    # A crashed backend drops this connection: the postmaster itself survives and resets.
    check(not superuser and alive and answered == done and done >= args.cases,
          f"{done} cases answered (rows or ERROR) by an unprivileged role on one connection")
    check(postmaster_pid(args.pgdata) == pid_before and started_after == started, "postmaster PID and start time unchanged")
    check(not crashes, "server log has no 'terminated by signal' or crash lines")
    check(not outcomes["internal"], "no internal errors (XX000)")
    check(outcomes["status"]["rows"] > 0 and len(outcomes["status"]) > 3, "cases reached both results and several kinds of ERROR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
