"""Dependencies: every library flexingest imports is declared, and every private part of a
library that flexingest relies on (where no public API exists) is still there, in the shape
used. A release that moves one fails here, loudly, naming it, instead of in production."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flexingest"


def declared() -> dict[str, Requirement]:
    """Every requirement of pyproject.toml (dependencies and extras), by normalised name."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                                for r in extra)]
    out: dict[str, Requirement] = {}
    for text in requirements:
        req = Requirement(text)
        out[re.sub(r"[-_.]+", "-", req.name).lower()] = req
    return out


def imported_modules() -> set[str]:
    """Top-level modules the package imports (at module level or inside functions)."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"flexingest", "__future__"}


def test_every_imported_library_is_declared() -> None:
    dists = packages_distributions()
    names = declared()
    missing = []
    for module in sorted(imported_modules()):
        owners = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        if module == "google":  # a namespace: the module itself says which distribution
            owners = {"google-auth"}
        if not owners & set(names):
            missing.append(f"{module} (from {', '.join(sorted(owners))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.parametrize("dist", ["s3fs", "gcsfs", "adlfs", "aiobotocore", "azure-core", "azure-storage-blob",
                                  "azure-storage-queue", "google-cloud-pubsub"])
def test_libraries_whose_private_parts_are_used_are_bounded(dist: str) -> None:
    req = declared()[dist]
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier), \
        f"{dist}: private parts are used, so the requirement needs an upper bound: {req}"
    assert req.specifier.contains(version(dist), prereleases=True), f"installed {dist} {version(dist)} outside {req}"


def test_gcsfs_request_is_a_wrapped_coroutine() -> None:
    """flexingest re-wraps GCSFileSystem._request with fewer retries (gcsfs bakes in six)."""
    from gcsfs.core import GCSFileSystem
    from gcsfs.retry import retry_request

    inner = GCSFileSystem._request.__wrapped__
    assert inspect.iscoroutinefunction(inner), "gcsfs changed GCSFileSystem._request"
    assert list(inspect.signature(inner).parameters)[:3] == ["self", "method", "path"]
    assert callable(retry_request(retries=1))
    assert hasattr(GCSFileSystem, "_call") and inspect.iscoroutinefunction(GCSFileSystem._call)


def test_adlfs_client_settings_are_where_flexingest_sets_them() -> None:
    """Timeouts and backoff of the Azure SDK client adlfs builds (adlfs passes none of them)."""
    from adlfs import AzureBlobFileSystem

    fs = AzureBlobFileSystem(connection_string="DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
                                               "BlobEndpoint=http://127.0.0.1:1/a;", skip_instance_cache=True)
    config = fs.service_client._config
    for name in ("timeout", "read_timeout"):
        assert hasattr(config.transport.connection_config, name), f"azure-core moved connection_config.{name}"
    for name in ("initial_backoff", "increment_base", "random_jitter_range"):
        assert hasattr(config.retry_policy, name), f"azure-storage-blob moved retry_policy.{name}"
    container = fs.service_client.get_container_client("c")
    send = container._client._send_request  # returns an awaitable response
    assert list(inspect.signature(send).parameters)[:1] == ["request"], "the generated client changed _send_request"
    assert isinstance(container.api_version, str)


def test_queue_clients_settings_are_where_the_event_sources_set_them() -> None:
    """The Azure queue client's backoff (set like the blob client's), and the Pub/Sub transport
    that takes a plain gRPC channel (emulators)."""
    from azure.storage.queue import QueueClient
    from google.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    client = QueueClient("http://127.0.0.1:1/a", "q", credential={"account_name": "a", "account_key": "a2V5"})
    for name in ("initial_backoff", "increment_base", "random_jitter_range"):
        assert hasattr(client._config.retry_policy, name), f"azure-storage-queue moved retry_policy.{name}"
    assert "channel" in inspect.signature(SubscriberGrpcTransport).parameters
    for method in ("pull", "acknowledge", "modify_ack_deadline", "get_subscription"):
        assert callable(getattr(SubscriberClient, method, None)), f"google-cloud-pubsub lost {method}"


def test_aiobotocore_sessions_take_refreshable_credentials() -> None:
    """Assumed-role credentials are given to a session through its ``_credentials``."""
    from aiobotocore.credentials import AioDeferredRefreshableCredentials
    from aiobotocore.session import AioSession

    session = AioSession()
    assert hasattr(session, "_credentials"), "aiobotocore sessions no longer keep _credentials"
    assert "refresh_using" in inspect.signature(AioDeferredRefreshableCredentials).parameters
    factory = session.get_component("response_parser_factory")
    assert callable(factory.set_parser_defaults)


def test_s3fs_calls_used_by_the_listing_and_reads() -> None:
    from s3fs import S3FileSystem

    assert inspect.iscoroutinefunction(S3FileSystem._call_s3)
    assert hasattr(S3FileSystem, "retries"), "flexingest sets S3FileSystem.retries to 1"
