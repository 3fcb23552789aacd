"""The emulators and the Store helper work end to end on every backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from stores import Store

ODD_KEY = "reports/été 2024/naïve résumé ☃.txt"  # spaces, unicode, nested folders
NESTED_KEY = "a/b/c/deep.bin"
PLAIN_KEY = "plain.txt"


def test_store_round_trip(store: Store) -> None:
    assert store.keys() == []

    store.put(PLAIN_KEY, b"plain")
    store.put_many({ODD_KEY: "héllo wörld".encode(), NESTED_KEY: bytes(range(256))})

    assert store.keys() == sorted([PLAIN_KEY, ODD_KEY, NESTED_KEY])
    assert store.read(ODD_KEY) == "héllo wörld".encode()
    assert store.read(NESTED_KEY) == bytes(range(256))

    store.delete(ODD_KEY)
    assert store.keys() == sorted([PLAIN_KEY, NESTED_KEY])
    with pytest.raises(FileNotFoundError):
        store.read(ODD_KEY)
    assert store.read(PLAIN_KEY) == b"plain"


def test_new_store_gives_separate_buckets(
    store: Store, new_store: Callable[[str], Store]
) -> None:
    other = new_store(store.kind)
    assert other.bucket != store.bucket
    other.put("only-here.txt", b"x")
    assert store.keys() == []
    assert other.keys() == ["only-here.txt"]
