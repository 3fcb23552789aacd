from __future__ import annotations

import os

# Must happen before anything imports gcsfs: otherwise every GCS bucket operation stalls ~40 s
# trying gRPC over TLS against the plain-HTTP emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pathlib  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
from servers import Server, start_azurite, start_fake_gcs, start_moto  # noqa: E402
from stores import KINDS, Store, make_store  # noqa: E402

# ============================================================================================
# Emulators and stores (tests/servers.py, tests/stores.py)
#
# One server per backend per pytest process (each xdist worker starts its own, on free
# ports), started only when a test asks for it. `store` gives every test a fresh bucket on
# every backend; `new_store(kind)` makes more when a test needs several.
# ============================================================================================

_SERVER_FIXTURES = {"s3": "s3_server", "gcs": "gcs_server", "azure_blob": "azure_server"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Server]:
    server = start_fake_gcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[Server]:
    server = start_azurite()
    yield server
    server.stop()


def _server_for(request: pytest.FixtureRequest, kind: str) -> Server | None:
    fixture = _SERVER_FIXTURES.get(kind)
    return None if fixture is None else request.getfixturevalue(fixture)


@pytest.fixture(params=KINDS, ids=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Store:
    """A fresh, empty bucket / container / folder on the parametrized backend."""
    kind: str = request.param
    return make_store(kind, _server_for(request, kind), tmp_path)


@pytest.fixture
def new_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Callable[[str], Store]:
    """Factory: ``new_store(kind)`` returns another fresh store of that kind on each call."""

    def factory(kind: str) -> Store:
        return make_store(kind, _server_for(request, kind), tmp_path)

    return factory
