"""boto3 against Shoal, compared with boto3 against the origin.

Started by tests/clients.rs with the endpoints and bucket in the environment; exits non-zero
on the first difference. Shoal ignores signatures, so the same credentials serve both.
"""
import hashlib
import os
import sys
import tempfile

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

SHOAL = os.environ["SHOAL_ENDPOINT"]
ORIGIN = os.environ["ORIGIN_ENDPOINT"]
BUCKET = os.environ["BUCKET"]
KEYS = os.environ["KEYS"].split("\n")
BIG = os.environ["BIG_KEY"]

passed = 0
failed = 0


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_REGION", "garage"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


shoal, origin = client(SHOAL), client(ORIGIN)


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: shoal={got!r} origin={want!r}", file=sys.stderr)


def outcome(fn):
    """The answer, or the error code and HTTP status."""
    try:
        return ("ok", fn())
    except ClientError as e:
        return ("error", e.response["Error"].get("Code"), e.response["ResponseMetadata"]["HTTPStatusCode"])


HEAD_FIELDS = ["ContentLength", "ETag", "ContentType", "CacheControl", "ContentDisposition",
               "ContentEncoding", "ContentLanguage", "Metadata", "AcceptRanges", "LastModified"]

for key in KEYS:
    a = shoal.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    b = origin.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    check(f"get {key!r}", hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest())
    ha = shoal.head_object(Bucket=BUCKET, Key=key)
    hb = origin.head_object(Bucket=BUCKET, Key=key)
    for f in HEAD_FIELDS:
        check(f"head {key!r} {f}", ha.get(f), hb.get(f))
    def ranged(c):
        r = c.get_object(Bucket=BUCKET, Key=key, Range="bytes=1-3")
        return (r["ContentRange"], r["Body"].read())
    check(f"range {key!r}", outcome(lambda: ranged(shoal)), outcome(lambda: ranged(origin)))
    etag = hb["ETag"]
    check(f"if-none-match {key!r}",
          outcome(lambda: shoal.get_object(Bucket=BUCKET, Key=key, IfNoneMatch=etag)["ETag"]),
          outcome(lambda: origin.get_object(Bucket=BUCKET, Key=key, IfNoneMatch=etag)["ETag"]))
    # Garage answers 412 without an XML body (boto3 then reports the code as "412"); S3 and
    # Shoal send <Code>PreconditionFailed</Code>. Compare statuses, and Shoal's code to S3's.
    sa = outcome(lambda: shoal.get_object(Bucket=BUCKET, Key=key, IfMatch='"nope"')["ETag"])
    sb = outcome(lambda: origin.get_object(Bucket=BUCKET, Key=key, IfMatch='"nope"')["ETag"])
    check(f"if-match {key!r} status", sa[-1], sb[-1])
    check(f"if-match {key!r} code", sa[1], "PreconditionFailed")

check("get missing", outcome(lambda: shoal.get_object(Bucket=BUCKET, Key="no/such/key")),
      outcome(lambda: origin.get_object(Bucket=BUCKET, Key="no/such/key")))
check("head missing", outcome(lambda: shoal.head_object(Bucket=BUCKET, Key="no/such/key")),
      outcome(lambda: origin.head_object(Bucket=BUCKET, Key="no/such/key")))


def all_pages(c, **kw):
    keys, prefixes = [], []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **kw):
        keys += [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return keys, prefixes


for kw in [{}, {"PaginationConfig": {"PageSize": 2}}, {"Delimiter": "/"}, {"Prefix": "dir/", "Delimiter": "/"}]:
    check(f"list_objects_v2 {kw}", all_pages(shoal, **kw), all_pages(origin, **kw))

# s3transfer: parallel ranged GETs of a large object.
with tempfile.TemporaryDirectory() as d:
    pa, pb = os.path.join(d, "a"), os.path.join(d, "b")
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=1 << 20, multipart_chunksize=1 << 20, max_concurrency=4)
    shoal.download_file(BUCKET, BIG, pa, Config=cfg)
    origin.download_file(BUCKET, BIG, pb, Config=cfg)
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
    check("download_file", digest(pa), digest(pb))

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
