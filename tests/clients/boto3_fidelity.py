"""boto3 reads versions, parts, SSE-C objects and tags through Shoal, each compared with
boto3's answer from the origin itself.

Started by tests/fidelity.rs: one Shoal in front of Garage (parts, SSE-C) and one in front of
moto (versions, tags), endpoints and buckets in the environment.
"""
import base64
import hashlib
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

passed = 0
failed = 0


def client(endpoint, region=None):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=region or os.environ.get("AWS_REGION", "garage"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: got {got!r}, want {want!r}")


def error_code(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


g_shoal, g_origin = client(os.environ["GARAGE_SHOAL"]), client(os.environ["GARAGE_ORIGIN"])
m_shoal = client(os.environ["MOTO_SHOAL"], "us-east-1")
m_origin = client(os.environ["MOTO_ORIGIN"], "us-east-1")
GB, MB, VERSION = os.environ["GARAGE_BUCKET"], os.environ["MOTO_BUCKET"], os.environ["VERSION"]

# A part by number: bytes, range, parts count.
for n in (1, 2, 3):
    got = g_shoal.get_object(Bucket=GB, Key="mp", PartNumber=n)
    want = g_origin.get_object(Bucket=GB, Key="mp", PartNumber=n)
    for field in ("ContentRange", "PartsCount", "ContentLength", "ETag"):
        check(f"part {n} {field}", got.get(field), want.get(field))
    check(f"part {n} bytes", hashlib.sha256(got["Body"].read()).hexdigest(),
          hashlib.sha256(want["Body"].read()).hexdigest())
    got = g_shoal.head_object(Bucket=GB, Key="mp", PartNumber=n)
    want = g_origin.head_object(Bucket=GB, Key="mp", PartNumber=n)
    for field in ("PartsCount", "ContentLength"):
        check(f"head part {n} {field}", got.get(field), want.get(field))

# SSE-C, with the key (boto3 computes the MD5 itself) and without it.
key = base64.b64decode(os.environ["SSE_KEY"])
sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
got = g_shoal.get_object(Bucket=GB, Key="secret", **sse)
want = g_origin.get_object(Bucket=GB, Key="secret", **sse)
check("sse-c bytes", got["Body"].read(), want["Body"].read())
check("sse-c algorithm", got.get("SSECustomerAlgorithm"), want.get("SSECustomerAlgorithm"))
got = g_shoal.get_object(Bucket=GB, Key="secret", Range="bytes=100-299", **sse)
want = g_origin.get_object(Bucket=GB, Key="secret", Range="bytes=100-299", **sse)
check("sse-c range", (got["ContentRange"], got["Body"].read()),
      (want["ContentRange"], want["Body"].read()))
check("sse-c without the key",
      error_code(lambda: g_shoal.get_object(Bucket=GB, Key="secret")),
      error_code(lambda: g_origin.get_object(Bucket=GB, Key="secret")))
wrong = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": b"x" * 32}
check("sse-c with a wrong key",
      error_code(lambda: g_shoal.get_object(Bucket=GB, Key="secret", **wrong)),
      error_code(lambda: g_origin.get_object(Bucket=GB, Key="secret", **wrong)))

# A specific version, twice (the second from the cache), and its tags.
for _ in range(2):
    got = m_shoal.get_object(Bucket=MB, Key="obj", VersionId=VERSION)
    want = m_origin.get_object(Bucket=MB, Key="obj", VersionId=VERSION)
    check("version id", got.get("VersionId"), want.get("VersionId"))
    check("version bytes", hashlib.sha256(got["Body"].read()).hexdigest(),
          hashlib.sha256(want["Body"].read()).hexdigest())
got = m_shoal.head_object(Bucket=MB, Key="obj", VersionId=VERSION)
want = m_origin.head_object(Bucket=MB, Key="obj", VersionId=VERSION)
check("version head", (got["VersionId"], got["ContentLength"], got["ETag"]),
      (want["VersionId"], want["ContentLength"], want["ETag"]))
check("version tags",
      m_shoal.get_object_tagging(Bucket=MB, Key="obj", VersionId=VERSION)["TagSet"],
      m_origin.get_object_tagging(Bucket=MB, Key="obj", VersionId=VERSION)["TagSet"])
check("versions listed",
      [(v["Key"], v["VersionId"]) for v in m_shoal.list_object_versions(Bucket=MB)["Versions"]],
      [(v["Key"], v["VersionId"]) for v in m_origin.list_object_versions(Bucket=MB)["Versions"]])

print(f"{passed} passed, {failed} failed")
raise SystemExit(1 if failed else 0)
