"""Diagnostic client of BM-7: one read-path operation, its CPU measured inside the process.

    .venv/bin/python benchmarks/_read_path_client.py MODE PIPELINE.yaml PREFIX CONCURRENCY

MODE is ``CLIENT-OP``: OP ``list`` lists every key under PREFIX, OP ``get`` lists PREFIX
(not measured) and then reads every object whole, CONCURRENCY at a time. CLIENT:

- ``fsspec``: flexingest's fsspec storages (``S3Storage`` / ``AzureBlobStorage``: s3fs, adlfs),
  ``iter_pages`` and ``read_versioned`` from a thread pool, as a pass does
- ``flexingest``: whatever ``open_connector`` opens for the connector (the pass's read path)
- ``obstore``: obstore alone, ``list`` in chunks of 1000 and ``get`` from a thread pool
- ``obstore_async``: obstore ``get_async`` on one event loop, CONCURRENCY in flight

Prints one JSON line: keys, bytes, and the CPU and wall seconds of the measured part
(``time.process_time`` of the whole process, so threads of the clients count too).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _obstore_store(kind: str, config: dict[str, Any]) -> Any:
    from obstore.store import AzureStore, S3Store

    if kind == "s3":
        return S3Store(config["bucket"], endpoint=config["endpoint_url"], region=config["region"],
                       access_key_id=config["aws_access_key_id"], secret_access_key=config["aws_secret_access_key"],
                       client_options={"allow_http": True})
    return AzureStore(config["container"], account_name=config["account_name"], account_key=config["account_key"],
                      endpoint=config["account_url"], client_options={"allow_http": True})


def main() -> int:
    mode, pipeline_path, prefix, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client, op = mode.rsplit("-", 1)
    from flexingest.loader import load_pipeline

    pipeline = load_pipeline(pipeline_path)
    connector = pipeline.connectors[0]
    kind = connector.type
    config = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in vars(connector.config).items()}
    keys: list[str] = []
    total = 0

    if client in ("fsspec", "flexingest"):
        from flexingest import connectors

        if client == "fsspec":
            from flexingest.connectors.azure_blob import AzureBlobStorage
            from flexingest.connectors.s3 import S3Storage

            cls = {"s3": S3Storage, "azure_blob": AzureBlobStorage}[kind]
            storage = cls(connector, pipeline.base_dir)
        else:
            storage = connectors.open_connector(connector, pipeline.base_dir)

        def list_all() -> list[str]:
            return [o.key for page in storage.iter_pages(prefix) for o in page]

        def read(key: str) -> int:
            return len(storage.read_versioned(key)[0])
    else:
        import obstore

        store = _obstore_store(kind, config)

        def list_all() -> list[str]:
            return [o["path"] for chunk in obstore.list(store, prefix.rstrip("/") or None, chunk_size=1000)
                    for o in chunk]

        def read(key: str) -> int:
            return len(obstore.get(store, key).bytes())

    if op == "list":
        cpu0, wall0 = time.process_time(), time.perf_counter()
        keys = list_all()
    else:
        keys = list_all()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if client == "obstore_async":
            import obstore

            async def run() -> int:
                gate = asyncio.Semaphore(concurrency)

                async def one(key: str) -> int:
                    async with gate:
                        result = await obstore.get_async(store, key)
                        return len(await result.bytes_async())

                return sum(await asyncio.gather(*(one(k) for k in keys)))

            total = asyncio.run(run())
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                total = sum(pool.map(read, keys))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"keys": len(keys), "bytes": total, "cpu": cpu, "wall": wall}), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # obstore 0.12's runtime can abort at interpreter shutdown after asyncio.run (SIGABRT):
    # the figures are printed, leave without the teardown
    os._exit(code)
