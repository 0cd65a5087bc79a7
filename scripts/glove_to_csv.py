"""Writes GloVe vectors as CSV rows `id,word,{x1,...,x50}` for COPY into a real[] column.

Usage: glove_to_csv.py VECTORS.npy WORDS.parquet OUT.csv
"""
import csv
import sys

import numpy as np
import pyarrow.parquet as pq

vectors = np.load(sys.argv[1])
words = pq.read_table(sys.argv[2]).column(0).to_pylist()
assert vectors.shape == (len(words), 50), (vectors.shape, len(words))
with open(sys.argv[3], "w", newline="", encoding="utf-8") as out:
    writer = csv.writer(out)
    for i, (word, row) in enumerate(zip(words, vectors), start=1):
        # str() of a float32 is its shortest round-trip form, so no precision is lost.
        writer.writerow([i, word, "{" + ",".join(map(str, row)) + "}"])
