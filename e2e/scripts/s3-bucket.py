#!/usr/bin/env python3
"""Create (or check) an S3 bucket with one SigV4-signed request, using only the standard library.

Usage: s3-bucket.py create|exists ENDPOINT BUCKET   (credentials and region from AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION). Path-style addressing, as MinIO serves it. Exit 0 on success
(create: made or already ours; exists: the bucket is there), 1 otherwise.
There is no mc or aws CLI here, and a stdlib script avoids a virtualenv just for one request.
"""

import datetime
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_request(method: str, endpoint: str, bucket: str) -> urllib.request.Request:
    access_key = os.environ["AWS_ACCESS_KEY_ID"]
    secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    url = urllib.parse.urlsplit(endpoint)
    path = "/" + urllib.parse.quote(bucket)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": url.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload_hash]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # urllib sets it from the URL, to the same value
    return urllib.request.Request(f"{url.scheme}://{url.netloc}{path}", method=method, headers=headers)


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] not in ("create", "exists"):
        print(__doc__, file=sys.stderr)
        return 2
    action, endpoint, bucket = sys.argv[1:]
    method = "PUT" if action == "create" else "HEAD"
    try:
        with urllib.request.urlopen(signed_request(method, endpoint, bucket), timeout=10):
            return 0
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        if action == "create" and "BucketAlreadyOwnedByYou" in body:
            return 0
        print(f"s3-bucket: {method} {bucket}: HTTP {err.code} {body.strip()[:300]}", file=sys.stderr)
    except OSError as err:
        print(f"s3-bucket: {method} {bucket}: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
