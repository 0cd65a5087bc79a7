"""pgvector's own Python client (pgvector-python with psycopg 3) against ragtune, unchanged:
text and binary wire formats, COPY, numpy round trips and error reporting.

Run by scripts/test.sh with RAGTUNE_TEST_DSN pointing at a database of a local cluster.
"""
import os
import unittest

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector


class PgvectorPythonClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.conn = psycopg.connect(os.environ["RAGTUNE_TEST_DSN"], autocommit=True)
        cls.conn.execute("SET client_min_messages = warning")
        cls.conn.execute("DROP EXTENSION IF EXISTS ragtune CASCADE")
        cls.conn.execute("CREATE EXTENSION ragtune")
        register_vector(cls.conn)

    @classmethod
    def tearDownClass(cls):
        cls.conn.close()

    def setUp(self):
        self.conn.execute("DROP TABLE IF EXISTS items")
        self.conn.execute("CREATE TABLE items (id serial PRIMARY KEY, embedding vector(3), half halfvec(3))")

    def test_numpy_round_trip_text_format(self):
        embedding = np.array([1.5, -2.25, 3.0e-7], dtype=np.float32)
        self.conn.execute("INSERT INTO items (embedding) VALUES (%s)", (embedding,))
        (got,) = self.conn.execute("SELECT embedding FROM items").fetchone()
        np.testing.assert_array_equal(got.to_numpy(), embedding)
        self.assertEqual(got.to_numpy().dtype, np.float32)

    def test_numpy_round_trip_binary_format(self):
        embedding = np.array([0.1, 65504.0, -1.0], dtype=np.float32)
        with self.conn.cursor(binary=True) as cur:
            cur.execute("INSERT INTO items (embedding) VALUES (%b)", (embedding,))
            cur.execute("SELECT embedding FROM items")
            (got,) = cur.fetchone()
        np.testing.assert_array_equal(got.to_numpy(), embedding)

    def test_binary_copy(self):
        rows = np.random.default_rng(42).standard_normal((500, 3)).astype(np.float32)
        with self.conn.cursor() as cur:
            with cur.copy("COPY items (embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["vector"])
                for row in rows:
                    copy.write_row([row])
        got = [r[0].to_numpy() for r in self.conn.execute("SELECT embedding FROM items ORDER BY id")]
        np.testing.assert_array_equal(np.stack(got), rows)

    def test_halfvec_text_and_binary(self):
        values = [1.5, -2.0, 0.099975586]
        self.conn.execute("INSERT INTO items (half) VALUES (%s)", (HalfVector(values),))
        (text_value,) = self.conn.execute("SELECT half FROM items").fetchone()
        with self.conn.cursor(binary=True) as cur:
            cur.execute("SELECT half FROM items")
            (binary_value,) = cur.fetchone()
        # Stored as IEEE binary16: read back exactly the float16 rounding of the input.
        expected = np.array(values, dtype=np.float16).astype(np.float64)
        for got in (text_value, binary_value):
            np.testing.assert_array_equal(np.array(got.to_list()), expected)

    def test_nearest_neighbours_match_numpy(self):
        rng = np.random.default_rng(7)
        rows = rng.standard_normal((200, 3)).astype(np.float32)
        query = rng.standard_normal(3).astype(np.float32)
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO items (id, embedding) VALUES (%s, %s)", [(i, r) for i, r in enumerate(rows)])
        got = [r[0] for r in self.conn.execute("SELECT id FROM items ORDER BY embedding <-> %s LIMIT 5", (query,))]
        want = np.argsort(np.linalg.norm(rows.astype(np.float64) - query, axis=1))[:5].tolist()
        self.assertEqual(got, want)
        got = [r[0] for r in self.conn.execute("SELECT id FROM items ORDER BY embedding <=> %s LIMIT 5", (query,))]
        r64, q64 = rows.astype(np.float64), query.astype(np.float64)
        cosine = 1 - (r64 @ q64) / (np.linalg.norm(r64, axis=1) * np.linalg.norm(q64))
        self.assertEqual(got, np.argsort(cosine)[:5].tolist())

    def test_errors_are_sqlstate_errors(self):
        with self.assertRaises(psycopg.errors.DataException) as raised:
            self.conn.execute("INSERT INTO items (embedding) VALUES (%s)", (np.array([1, 2], dtype=np.float32),))
        self.assertIn("expected 3 dimensions, not 2", str(raised.exception))
        with self.assertRaises(psycopg.errors.InvalidTextRepresentation):
            self.conn.execute("SELECT '[1,2'::vector")
        (alive,) = self.conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'").fetchone()
        self.assertEqual(alive, 1.0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
