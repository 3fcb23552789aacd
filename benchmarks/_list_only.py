"""Diagnostic for BM-1: flexingest's connector listing alone (no state, no diff, no CLI).

    .venv/bin/python benchmarks/_list_only.py PIPELINE.yaml   # prints the number of keys listed

Uses flexingest's internals (loader, ``open_connector(...).iter_pages``): if they move, BM-1
skips this row.
"""

import sys

from flexingest.connectors import open_connector
from flexingest.loader import load_pipeline

pipeline = load_pipeline(sys.argv[1])
sync = pipeline.syncs[0]
storage = open_connector(pipeline.connector(sync.connector), pipeline.base_dir)
count = 0
for page in storage.iter_pages(sync.prefix or ""):
    count += len(page)
print(count)
