"""Python's azure-storage-blob against Azurite: seeds the Azure origin's tests and lists as
the reference. Started by tests/azure.rs.

    azure_blobs.py upload CONTAINER   < JSON [{"name", "path", "type"?, "content_type"?,
                                               "cache_control"?, "content_disposition"?,
                                               "content_encoding"?, "content_language"?,
                                               "metadata"?}]
    azure_blobs.py list CONTAINER PREFIX DELIMITER   -> JSON {"blobs": [...], "prefixes": [...]}
    azure_blobs.py etag CONTAINER NAME               -> the blob's ETag
    azure_blobs.py sas CONTAINER                     -> an account SAS token (read, list)
"""
import json
import os
import sys

from azure.storage.blob import BlobServiceClient, ContentSettings

service = BlobServiceClient.from_connection_string(os.environ["AZURE_CONNECTION_STRING"])
cmd, container = sys.argv[1], sys.argv[2]
c = service.get_container_client(container)

if cmd == "upload":
    if not c.exists():
        c.create_container()
    for spec in json.load(sys.stdin):
        data = open(spec["path"], "rb").read()
        kind = spec.get("type", "block")
        b = c.get_blob_client(spec["name"])
        if kind == "page":
            b.upload_blob(data, blob_type="PageBlob", overwrite=True)
        elif kind == "append":
            b.upload_blob(data, blob_type="AppendBlob", overwrite=True)
        else:
            settings = ContentSettings(
                content_type=spec.get("content_type"),
                cache_control=spec.get("cache_control"),
                content_disposition=spec.get("content_disposition"),
                content_encoding=spec.get("content_encoding"),
                content_language=spec.get("content_language"),
            )
            b.upload_blob(data, overwrite=True, content_settings=settings,
                          metadata=spec.get("metadata"))
    print("ok")
elif cmd == "list":
    prefix, delimiter = sys.argv[3], sys.argv[4]
    blobs, prefixes = [], []
    for item in c.walk_blobs(name_starts_with=prefix or None, delimiter=delimiter):
        if hasattr(item, "prefix") and not hasattr(item, "size"):
            prefixes.append(item.name)
        else:
            blobs.append(item.name)
    print(json.dumps({"blobs": blobs, "prefixes": prefixes}))
elif cmd == "etag":
    print(c.get_blob_client(sys.argv[3]).get_blob_properties().etag)
elif cmd == "sas":
    # An account SAS that may read and list, for an hour.
    from datetime import datetime, timedelta, timezone
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
    print(generate_account_sas(
        service.account_name, service.credential.account_key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1)))
