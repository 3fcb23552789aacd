"""Diagnostic for BM-3: the floor of a Python copier on the same stack as flexingest.

Lists an S3 bucket and copies every object into a local folder with s3fs' async API alone:
one event loop, ``--concurrency`` GETs in flight (an asyncio semaphore), each object written
with a plain ``open().write()`` (no temporary file, no state, no threads). What flexingest
could reach on s3fs/aiobotocore if its own per-object overhead were zero.

    .venv/bin/python benchmarks/_floor_copy.py ENDPOINT BUCKET OUT_DIR CONCURRENCY
"""

from __future__ import annotations

import asyncio
import os
import sys


async def main(endpoint: str, bucket: str, out: str, concurrency: int) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, asynchronous=True,
                           skip_instance_cache=True)
    session = await fs.set_session()
    keys = [p for p in await fs._find(bucket) if not p.endswith("/")]
    gate = asyncio.Semaphore(concurrency)

    async def copy(path: str) -> None:
        async with gate:
            data = await fs._cat_file(path)
        dest = os.path.join(out, path[len(bucket) + 1:])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)

    await asyncio.gather(*(copy(p) for p in keys))
    await session.close()
    print(len(keys))
    return 0


if __name__ == "__main__":
    endpoint, bucket, out, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sys.exit(asyncio.run(main(endpoint, bucket, out, concurrency)))
