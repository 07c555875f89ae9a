"""Credentials for a warehouse on object storage, from a project connection.

delta-rs (object_store) and fsspec (adlfs, s3fs) name their options differently; this
module turns one headwater connection into both. An Azure connection string is split into
account name, key and endpoint, since object_store takes no connection strings; Azurite
on loopback is recognised so the emulator works as a warehouse in tests and demos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from headwater.datasets.delta import Location
from headwater.exceptions import ConfigError

AZURE = ("az", "abfs", "abfss")


def _parse_connection_string(text: str) -> dict[str, str]:
    parts = (p.split("=", 1) for p in text.split(";") if "=" in p)
    return {k.strip(): v.strip() for k, v in parts}


def azure_delta_options(settings: Mapping[str, Any]) -> dict[str, str]:
    """object_store options from ``connection_string`` or ``account_name``/``account_key``."""
    if settings.get("connection_string"):
        fields = _parse_connection_string(str(settings["connection_string"]))
        options = {"account_name": fields.get("AccountName", ""),
                   "account_key": fields.get("AccountKey", "")}
        endpoint = fields.get("BlobEndpoint")
        if endpoint:
            parsed = urlparse(endpoint)
            if parsed.hostname in ("127.0.0.1", "localhost") and parsed.port == 10000:
                options["use_emulator"] = "true"
            else:
                options["endpoint"] = endpoint
                if parsed.scheme == "http":
                    options["allow_http"] = "true"
        return options
    return {k: str(v) for k, v in settings.items() if v is not None}


def warehouse_location(warehouse: str, settings: Mapping[str, Any] | None) -> Location | None:
    """The credentials of a remote ``warehouse``; None for a local folder."""
    scheme = warehouse.split("://", 1)[0] if "://" in warehouse else ""
    if scheme in ("", "file"):
        return None
    if settings is None and scheme in AZURE and os.environ.get(
            "AZURE_STORAGE_CONNECTION_STRING"):
        settings = {"type": "azure_blob",
                    "connection_string": os.environ["AZURE_STORAGE_CONNECTION_STRING"]}
    if settings is None:
        raise ConfigError(
            f"headwater.yaml: warehouse {warehouse} needs credentials: set "
            "'warehouse_connection: <name of a connection>'", problems=[])
    plain = {k: v for k, v in settings.items() if k != "type" and v is not None}
    delta_options = azure_delta_options(plain) if scheme in AZURE else {
        k: str(v) for k, v in plain.items()}
    return Location(prefix=warehouse.rstrip("/"), delta_options=delta_options,
                    fsspec_options=plain)
