"""boto3 against Shoal with auth.mode = "sigv4": a valid user reads, the wrong ones are refused
with the codes S3 uses, and presigned URLs are made for the Rust test to fetch with curl.

Environment: SHOAL_ENDPOINT, BUCKET (the user may read), OTHER_BUCKET (it may not), KEYS
(newline-separated, all in BUCKET), READER_KEY, READER_SECRET. Prints one line per check, then
"PRESIGNED <name> <url>" lines, then "N passed, M failed".
"""

import os
import sys
import time
from urllib.parse import unquote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = os.environ["SHOAL_ENDPOINT"]
bucket = os.environ["BUCKET"]
other = os.environ["OTHER_BUCKET"]
keys = os.environ["KEYS"].split("\n")
reader, secret = os.environ["READER_KEY"], os.environ["READER_SECRET"]

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def client(key, sec):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=sec,
        region_name="us-east-1",
        # botocore presigns with Signature Version 2 unless told otherwise; Shoal (like S3 in
        # every region opened since 2014) accepts Version 4 only.
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def code_of(fn):
    try:
        fn()
        return "no error"
    except ClientError as e:
        return e.response.get("Error", {}).get("Code")


s3 = client(reader, secret)
for k in keys:
    body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
    head = s3.head_object(Bucket=bucket, Key=k)
    check(f"get+head {k!r}", head["ContentLength"] == len(body))
    if len(body) > 10:
        part = s3.get_object(Bucket=bucket, Key=k, Range="bytes=3-9")["Body"].read()
        check(f"range {k!r}", part == body[3:10])
listed = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}):
    listed += [o["Key"] for o in page.get("Contents", [])]
all_keys = sorted(keys + ["big.bin"])
check("list v2 (paged, keys that need encoding)", sorted(listed) == all_keys, f"{listed}")
# Asked for explicitly, encoding-type=url keys come back encoded (botocore leaves them so):
# decoded, they are the keys.
listed_url = [unquote(o["Key"]) for o in s3.list_objects_v2(Bucket=bucket, EncodingType="url").get("Contents", [])]
check("list with encoding-type=url", sorted(listed_url) == all_keys, f"{listed_url}")

k0 = keys[0]
check("wrong secret", code_of(lambda: client(reader, secret + "x").get_object(Bucket=bucket, Key=k0)) == "SignatureDoesNotMatch")
check("unknown key", code_of(lambda: client("nobody", secret).get_object(Bucket=bucket, Key=k0)) == "InvalidAccessKeyId")
check("bucket not allowed", code_of(lambda: s3.get_object(Bucket=other, Key=k0)) == "AccessDenied")
check("list not allowed", code_of(lambda: s3.list_objects_v2(Bucket=other)) == "AccessDenied")
buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
check("list buckets shows only the user's", other not in buckets, f"{buckets}")

print(f"PRESIGNED valid {s3.generate_presigned_url('get_object', Params={'Bucket': bucket, 'Key': k0}, ExpiresIn=300)}")
print(f"PRESIGNED expired {s3.generate_presigned_url('get_object', Params={'Bucket': bucket, 'Key': k0}, ExpiresIn=1)}")
print(f"PRESIGNED other {s3.generate_presigned_url('get_object', Params={'Bucket': other, 'Key': k0}, ExpiresIn=300)}")
time.sleep(2)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
