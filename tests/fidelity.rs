//! S3 fidelity, part 2: ListBuckets, `NoSuchBucket`, keys the Rust SDK refuses, versions,
//! parts, SSE-C, read-only sub-resources, checksums and the 412 body — each compared with
//! the origin's own answer to the same request.
//!
//! Two real S3 servers: Garage (the suite's origin) for everything it has, and moto in server
//! mode for what Garage lacks — object versioning, object tagging and stored checksums.

mod common;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload,
    CompletedPart, Tag, Tagging, VersioningConfiguration,
};
use aws_sdk_s3::Client;
use common::moto::moto;
use common::*;
use shoal::config::Config;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Shoal in front of moto (which wants a real region name).
fn moto_config() -> Config {
    let mut c = config(garage());
    c.origin.id = "moto".into();
    c.origin.endpoint = Some(moto().endpoint.clone());
    c.origin.region = "us-east-1".into();
    c
}

/// An SDK client for moto, or for a Shoal in front of it.
fn moto_client(endpoint: &str) -> Client {
    Client::from_conf(
        client(endpoint)
            .config()
            .to_builder()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build(),
    )
}

/// Puts an object under exactly `key`, even one the Rust SDK refuses to build a request for
/// (whitespace only): the request is built for a placeholder and its path rewritten.
async fn put_exact(c: &Client, b: &str, key: &str, data: Vec<u8>) {
    let from = format!("/{b}/placeholder");
    let to = format!("/{b}/{}", shoal::origin::url_encode(key));
    c.put_object()
        .bucket(b)
        .key("placeholder")
        .body(ByteStream::from(data))
        .customize()
        .mutate_request(move |r| {
            let u = r.uri().replacen(&from, &to, 1);
            r.set_uri(u).unwrap();
        })
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
}

/// Decodes `%XX` escapes (and `+` as a space, as S3's `encoding-type=url` writes it).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + 6;
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}

async fn text(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-shoal-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn list_buckets_names_real_dates_and_never_the_origin_owner() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "lb").await;
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    let via = client(&shoal.base);
    let want = origin.list_buckets().send().await.unwrap();
    let got = via.list_buckets().send().await.unwrap();
    // The owner S3 shows is the caller. Without client auth there is no caller to name, and
    // the origin's owner is Shoal's own origin account (issue 19): Shoal names itself.
    assert_ne!(got.owner(), want.owner(), "never the origin's owner");
    assert_eq!(got.owner().and_then(|o| o.id()), Some("shoal"));
    let date = |l: &aws_sdk_s3::operation::list_buckets::ListBucketsOutput| {
        l.buckets()
            .iter()
            .find(|x| x.name() == Some(b.as_str()))
            .and_then(|x| x.creation_date().cloned())
    };
    assert!(date(&want).is_some());
    assert_eq!(date(&got), date(&want), "the bucket's real CreationDate");
    shoal.stop().await;

    // With an allowlist: only its buckets, in name order, with the dates the origin knows.
    let mut cfg = config(g);
    cfg.origin.buckets = vec![b.clone(), "absent-bucket".into()];
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let got = client(&shoal.base).list_buckets().send().await.unwrap();
    let names: Vec<&str> = got.buckets().iter().filter_map(|x| x.name()).collect();
    assert_eq!(names, ["absent-bucket", b.as_str()]);
    assert_eq!(date(&got), date(&want));
    assert_eq!(got.owner().and_then(|o| o.id()), Some("shoal"));
    shoal.stop().await;
}

#[tokio::test]
async fn a_missing_bucket_is_no_such_bucket_and_a_missing_key_no_such_key() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "nsb").await;
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    // From byte 0 (metadata from the first chunk's GET), from byte 5 (from a HEAD, whose 404
    // has no body), and again (from the negative cache): always NoSuchBucket.
    for _ in 0..2 {
        let (s, body) = text(shoal.get("no-such-bucket-here/k").await).await;
        assert_eq!((s, code(&body)), (404, Some("NoSuchBucket")), "{body}");
        let (s, body) = text(shoal.get_range("no-such-bucket-here/k", "bytes=5-9").await).await;
        assert_eq!((s, code(&body)), (404, Some("NoSuchBucket")), "{body}");
        assert!(body.contains("<BucketName>no-such-bucket-here</BucketName>"));
    }
    let h = shoal
        .http
        .head(shoal.url("no-such-bucket-here/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 404);
    // The Rust SDK sees the typed code on GET.
    let e = client(&shoal.base)
        .get_object()
        .bucket("no-such-bucket-here")
        .key("x")
        .range("bytes=3-4")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NoSuchBucket"));
    // In a bucket that exists, a missing key stays NoSuchKey on both paths.
    for range in ["bytes=0-", "bytes=5-9"] {
        let (s, body) = text(shoal.get_range(&format!("{b}/missing"), range).await).await;
        assert_eq!(
            (s, code(&body)),
            (404, Some("NoSuchKey")),
            "{range}: {body}"
        );
    }
    shoal.stop().await;
}

/// Every key class the public conformance suites use, including the whitespace-only keys
/// the Rust SDK refuses to build a request for.
const KEY_CLASSES: &[&str] = &[
    " ",
    "\t",
    "\n",
    "   ",
    " leading",
    "trailing ",
    "in side",
    "ctrl\u{1}char",
    "del\u{7f}",
    "q?mark",
    "hash#tag",
    "brackets[]{}",
    "amp&eq=",
    "pct%20literal",
    "plus+ +",
    "tilde~",
    "ümlaut/文件",
    "emoji😀",
    "semi;colon,comma",
    "quote\"'",
    "back\\slash",
    "_/=/-",
];

#[tokio::test]
async fn keys_of_every_class_are_served_exactly() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "keys").await;
    for (i, k) in KEY_CLASSES.iter().enumerate() {
        put_exact(&origin, &b, k, data(3000 + i * 11, i as u64)).await;
    }
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    for (i, k) in KEY_CLASSES.iter().enumerate() {
        let want = data(3000 + i * 11, i as u64);
        let path = format!("{b}/{}", shoal::origin::url_encode(k));
        for _ in 0..2 {
            let r = shoal.get(&path).await;
            assert_eq!(r.status(), 200, "{k:?}");
            assert_eq!(r.bytes().await.unwrap()[..], want[..], "{k:?}");
        }
        let r = shoal.get_range(&path, "bytes=100-199").await;
        assert_eq!(r.status(), 206, "{k:?}");
        assert_eq!(r.bytes().await.unwrap()[..], want[100..200], "{k:?}");
        let h = shoal.http.head(shoal.url(&path)).send().await.unwrap();
        assert_eq!(h.status(), 200, "{k:?}");
        assert_eq!(
            h.headers()["content-length"].to_str().unwrap(),
            want.len().to_string()
        );
    }
    // And they list as the origin lists them. XML 1.0 cannot carry control characters, so
    // the listing is asked for with `encoding-type=url` (as boto3 always does), which the
    // Rust SDK leaves encoded.
    let listed: Vec<String> = client(&shoal.base)
        .list_objects_v2()
        .bucket(&b)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(url_decode))
        .collect();
    let mut want: Vec<String> = KEY_CLASSES.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    shoal.stop().await;
}

/// A 3-part multipart object: 5 MiB, 5 MiB and 2 MiB + 123 bytes.
async fn multipart(c: &Client, b: &str, key: &str, body: &[u8]) {
    let up = c
        .create_multipart_upload()
        .bucket(b)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (i, range) in [0..5 * MIB, 5 * MIB..10 * MIB, 10 * MIB..body.len()]
        .into_iter()
        .enumerate()
    {
        let n = i as i32 + 1;
        let r = c
            .upload_part()
            .bucket(b)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(body[range].to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap())
                .build(),
        );
    }
    c.complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_part_by_number_is_served_from_the_chunk_cache() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "parts").await;
    let body = patterned(12 * MIB + 123, 41);
    multipart(&origin, &b, "mp", &body).await;
    put(&origin, &b, "single", data(5000, 2)).await;
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    let via = client(&shoal.base);
    for n in 1..=3 {
        let want = origin
            .get_object()
            .bucket(&b)
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        let got = via
            .get_object()
            .bucket(&b)
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(got.content_range(), want.content_range(), "part {n}");
        assert_eq!(got.parts_count(), want.parts_count(), "part {n}");
        assert_eq!(got.content_length(), want.content_length(), "part {n}");
        assert_eq!(got.e_tag(), want.e_tag());
        let (gb, wb) = (
            got.body.collect().await.unwrap().into_bytes(),
            want.body.collect().await.unwrap().into_bytes(),
        );
        assert_eq!(gb, wb, "part {n} bytes");
        let wh = origin
            .head_object()
            .bucket(&b)
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        let gh = via
            .head_object()
            .bucket(&b)
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(gh.content_length(), wh.content_length(), "HEAD part {n}");
        assert_eq!(gh.parts_count(), wh.parts_count(), "HEAD part {n}");
    }
    // The second read of a part is a hit: it is served from the object's chunks.
    let r = shoal
        .http
        .get(shoal.url(&format!("{b}/mp?partNumber=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(cache(&r), "hit");
    assert_eq!(r.bytes().await.unwrap()[..], body[5 * MIB..10 * MIB]);
    // A simple object's part 1 is what the origin says it is.
    let want = origin
        .get_object()
        .bucket(&b)
        .key("single")
        .part_number(1)
        .send()
        .await
        .unwrap();
    let got = via
        .get_object()
        .bucket(&b)
        .key("single")
        .part_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_range(), want.content_range());
    assert_eq!(got.content_length(), want.content_length());
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes(),
        want.body.collect().await.unwrap().into_bytes()
    );
    // What S3 refuses, Shoal refuses the same way.
    let (s, t) = text(
        shoal
            .http
            .get(shoal.url(&format!("{b}/mp?partNumber=1")))
            .header("range", "bytes=0-9")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code(&t)), (400, Some("InvalidRequest")), "{t}");
    for bad in ["0", "10001", "x"] {
        let (s, t) = text(shoal.get(&format!("{b}/mp?partNumber={bad}")).await).await;
        assert_eq!((s, code(&t)), (400, Some("InvalidArgument")), "{bad}: {t}");
    }
    shoal.stop().await;
}

/// A 256-bit SSE-C key, base64, and its MD5, base64.
const SSE_KEY: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
const SSE_KEY_MD5: &str = "KYvwGXoFFJ42a2u2GDWhwQ==";
const OTHER_KEY: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
const OTHER_KEY_MD5: &str = "nud5zSq83khSRIVXLGziog==";

#[tokio::test]
async fn sse_c_objects_are_passed_through_and_never_cached() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "ssec").await;
    let body = patterned(3 * MIB + 7, 5);
    origin
        .put_object()
        .bucket(&b)
        .key("secret")
        .body(ByteStream::from(body.clone()))
        .sse_customer_algorithm("AES256")
        .sse_customer_key(SSE_KEY)
        .sse_customer_key_md5(SSE_KEY_MD5)
        .send()
        .await
        .expect("SSE-C put (check SSE_KEY_MD5)");
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    let via = client(&shoal.base);
    for _ in 0..2 {
        let got = via
            .get_object()
            .bucket(&b)
            .key("secret")
            .sse_customer_algorithm("AES256")
            .sse_customer_key(SSE_KEY)
            .sse_customer_key_md5(SSE_KEY_MD5)
            .send()
            .await
            .unwrap();
        assert_eq!(got.sse_customer_algorithm(), Some("AES256"));
        assert_eq!(got.body.collect().await.unwrap().into_bytes()[..], body[..]);
    }
    let got = via
        .get_object()
        .bucket(&b)
        .key("secret")
        .range("bytes=1048570-1048590")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(SSE_KEY)
        .sse_customer_key_md5(SSE_KEY_MD5)
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_range(), Some("bytes 1048570-1048590/3145735"));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes()[..],
        body[1048570..=1048590]
    );
    let h = via
        .head_object()
        .bucket(&b)
        .key("secret")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(SSE_KEY)
        .sse_customer_key_md5(SSE_KEY_MD5)
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_length(), Some(body.len() as i64));
    // Marked as passed through.
    let r = shoal
        .http
        .get(shoal.url(&format!("{b}/secret")))
        .header("x-amz-server-side-encryption-customer-algorithm", "AES256")
        .header("x-amz-server-side-encryption-customer-key", SSE_KEY)
        .header("x-amz-server-side-encryption-customer-key-MD5", SSE_KEY_MD5)
        .send()
        .await
        .unwrap();
    assert_eq!(cache(&r), "bypass");
    assert_eq!(r.bytes().await.unwrap().len(), body.len());
    // Nothing of it was kept: no chunk in the store, and without the key the answer is the
    // origin's own error, never the bytes.
    assert_eq!(
        shoal.running.store.stats().used_bytes,
        0,
        "SSE-C bytes stored"
    );
    for (key, md5) in [(None, None), (Some(OTHER_KEY), Some(OTHER_KEY_MD5))] {
        let ask = |c: &Client| {
            c.get_object()
                .bucket(&b)
                .key("secret")
                .set_sse_customer_algorithm(key.map(|_| "AES256".to_owned()))
                .set_sse_customer_key(key.map(str::to_owned))
                .set_sse_customer_key_md5(md5.map(str::to_owned))
                .send()
        };
        let want = ask(&origin).await.unwrap_err();
        let got = ask(&via).await.unwrap_err();
        assert!(want.code().is_some(), "{want:?}");
        assert_eq!(got.code(), want.code(), "key {key:?}: {got:?}");
        assert_eq!(
            got.raw_response().map(|r| r.status().as_u16()),
            want.raw_response().map(|r| r.status().as_u16())
        );
    }
    assert_eq!(shoal.running.store.stats().used_bytes, 0);
    shoal.stop().await;
}

/// A moto bucket with versioning on, and two versions of `obj`: (bucket, v1, v2, A, B).
async fn versioned(c: &Client) -> (String, String, String, Vec<u8>, Vec<u8>) {
    let b = bucket(c, "ver").await;
    c.put_bucket_versioning()
        .bucket(&b)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let (a, bb) = (patterned(3 * MIB + 5, 7), patterned(2 * MIB + 9, 8));
    let mut ids = Vec::new();
    for body in [&a, &bb] {
        let r = c
            .put_object()
            .bucket(&b)
            .key("obj")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        ids.push(r.version_id().unwrap().to_owned());
    }
    (b, ids[0].clone(), ids[1].clone(), a, bb)
}

#[tokio::test]
async fn versions_are_read_by_id_and_cached() {
    let cfg = moto_config();
    let origin = moto_client(&moto().endpoint);
    let (b, v1, v2, a, bb) = versioned(&origin).await;
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let via = moto_client(&shoal.base);
    // The old version by id, the current one without: each its own bytes and id.
    for (vid, body) in [(Some(&v1), &a), (Some(&v2), &bb), (None, &bb)] {
        let got = via
            .get_object()
            .bucket(&b)
            .key("obj")
            .set_version_id(vid.cloned())
            .send()
            .await
            .unwrap();
        assert_eq!(got.version_id(), Some(vid.unwrap_or(&v2).as_str()));
        assert_eq!(got.content_length(), Some(body.len() as i64));
        assert_eq!(got.body.collect().await.unwrap().into_bytes()[..], body[..]);
        let h = via
            .head_object()
            .bucket(&b)
            .key("obj")
            .set_version_id(vid.cloned())
            .send()
            .await
            .unwrap();
        assert_eq!(h.version_id(), Some(vid.unwrap_or(&v2).as_str()));
        assert_eq!(h.content_length(), Some(body.len() as i64));
    }
    // Cached: the old version again is a hit, ranges across chunk boundaries too.
    let path = format!("{b}/obj?versionId={v1}");
    let r = shoal.get(&path).await;
    assert_eq!(cache(&r), "hit");
    assert_eq!(r.bytes().await.unwrap()[..], a[..]);
    let r = shoal.get_range(&path, "bytes=1048000-2098000").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap()[..], a[1048000..=2098000]);
    // A version that does not exist.
    let (s, t) = text(shoal.get(&format!("{b}/obj?versionId=nope-{v1}")).await).await;
    assert_eq!(s, 404, "{t}");
    assert_eq!(code(&t), Some("NoSuchVersion"), "{t}");
    // ListObjectVersions is the origin's own.
    let want = origin
        .list_object_versions()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    let got = via.list_object_versions().bucket(&b).send().await.unwrap();
    let ids = |o: &aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput| {
        o.versions()
            .iter()
            .map(|v| {
                (
                    v.key().map(str::to_owned),
                    v.version_id().map(str::to_owned),
                    v.is_latest(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&got), ids(&want));
    assert_eq!(ids(&got).len(), 2);
    shoal.stop().await;
}

#[tokio::test]
async fn read_only_sub_resources_are_the_origins_own_and_writes_stay_405() {
    let cfg = moto_config();
    let origin = moto_client(&moto().endpoint);
    let (b, v1, _, _, _) = versioned(&origin).await;
    origin
        .put_object_tagging()
        .bucket(&b)
        .key("obj")
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("team").value("ml").build().unwrap())
                .tag_set(Tag::builder().key("tier").value("gold").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let via = moto_client(&shoal.base);
    let tags = |c: &Client| c.get_object_tagging().bucket(&b).key("obj").send();
    let (want, got) = (tags(&origin).await.unwrap(), tags(&via).await.unwrap());
    assert_eq!(got.tag_set(), want.tag_set());
    assert_eq!(got.tag_set().len(), 2);
    let tags_v1 = |c: &Client| {
        c.get_object_tagging()
            .bucket(&b)
            .key("obj")
            .version_id(&v1)
            .send()
    };
    assert_eq!(
        tags_v1(&via).await.unwrap().tag_set(),
        tags_v1(&origin).await.unwrap().tag_set()
    );
    // The bucket's versioning, byte for byte as the origin wrote it (moto's root element is
    // not the one the Rust SDK expects, so this one is compared raw).
    let raw = |base: String| {
        let url = format!("{base}/{b}?versioning");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (got, want) = (
        raw(shoal.base.clone()).await,
        raw(moto().endpoint.clone()).await,
    );
    assert_eq!(got, want);
    assert!(got.1.contains("<Status>Enabled</Status>"), "{}", got.1);
    // GetObjectAttributes, raw as well (moto's Last-Modified is not in the form the Rust SDK
    // parses), with the header that names the attributes passed on.
    let attrs = |base: String| {
        let url = format!("{base}/{b}/obj?attributes");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("x-amz-object-attributes", "ETag,ObjectSize")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // (moto wants this one signed, so it is checked against the origin's HEAD instead.)
    let got = attrs(shoal.base.clone()).await;
    let head = origin
        .head_object()
        .bucket(&b)
        .key("obj")
        .send()
        .await
        .unwrap();
    assert_eq!(got.0, 200, "{}", got.1);
    let etag = head.e_tag().unwrap().trim_matches('"');
    assert!(got.1.contains(&format!("<ETag>{etag}</ETag>")), "{}", got.1);
    let size = head.content_length().unwrap();
    assert!(
        got.1.contains(&format!("<ObjectSize>{size}</ObjectSize>")),
        "{}",
        got.1
    );
    // The origin's errors come through as its own: a tagging read of a missing key.
    let e_want = origin
        .get_object_tagging()
        .bucket(&b)
        .key("missing")
        .send()
        .await
        .unwrap_err();
    let e_got = via
        .get_object_tagging()
        .bucket(&b)
        .key("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e_got.code(), e_want.code());
    // Writes stay refused.
    let e = via
        .put_object_tagging()
        .bucket(&b)
        .key("obj")
        .tagging(
            Tagging::builder()
                .set_tag_set(Some(vec![]))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("MethodNotAllowed"));
    assert_eq!(
        tags(&origin).await.unwrap().tag_set().len(),
        2,
        "nothing written"
    );
    shoal.stop().await;
}

#[tokio::test]
async fn stored_checksums_come_back_with_checksum_mode() {
    let cfg = moto_config();
    let origin = moto_client(&moto().endpoint);
    let b = bucket(&origin, "ck").await;
    let body = patterned(2 * MIB + 17, 9);
    origin
        .put_object()
        .bucket(&b)
        .key("obj")
        .body(ByteStream::from(body.clone()))
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap();
    let want = origin
        .head_object()
        .bucket(&b)
        .key("obj")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(want.checksum_crc32().is_some(), "moto stores the checksum");
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    // A client that validates what it is given.
    let via = aws_sdk_s3::Client::from_conf(
        moto_client(&shoal.base)
            .config()
            .to_builder()
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenSupported,
            )
            .build(),
    );
    // First a GET without checksum mode: its metadata comes from the first chunk's GET,
    // which carries no checksums; the next asks for them and must still get them.
    let plain = via.get_object().bucket(&b).key("obj").send().await.unwrap();
    assert_eq!(
        plain.body.collect().await.unwrap().into_bytes()[..],
        body[..]
    );
    let got = via
        .get_object()
        .bucket(&b)
        .key("obj")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc32(), want.checksum_crc32());
    // The SDK checked the body against it while reading.
    assert_eq!(got.body.collect().await.unwrap().into_bytes()[..], body[..]);
    let h = via
        .head_object()
        .bucket(&b)
        .key("obj")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(h.checksum_crc32(), want.checksum_crc32());
    // Without the header, no checksum headers (as S3).
    let h = via
        .head_object()
        .bucket(&b)
        .key("obj")
        .send()
        .await
        .unwrap();
    assert_eq!(h.checksum_crc32(), None);
    shoal.stop().await;
}

#[tokio::test]
async fn a_412_names_the_condition_that_failed() {
    let g = garage();
    let origin = client(&g.endpoint);
    let b = bucket(&origin, "cond").await;
    put(&origin, &b, "k", data(100, 1)).await;
    let shoal = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    for (h, v, cond) in [
        ("if-match", "\"nope\"", "If-Match"),
        (
            "if-unmodified-since",
            "Sat, 01 Jan 2000 00:00:00 GMT",
            "If-Unmodified-Since",
        ),
    ] {
        let r = shoal
            .http
            .get(shoal.url(&format!("{b}/k")))
            .header(h, v)
            .send()
            .await
            .unwrap();
        let (s, t) = text(r).await;
        assert_eq!((s, code(&t)), (412, Some("PreconditionFailed")), "{t}");
        assert!(
            t.contains(&format!("<Condition>{cond}</Condition>")),
            "{h}: {t}"
        );
    }
    shoal.stop().await;
}

/// boto3 reads a version, a part, an SSE-C object (with and without its key) and tags through
/// Shoal, each compared with the origin's own answer.
#[tokio::test]
async fn boto3_reads_versions_parts_sse_c_and_tags() {
    let g = garage();
    let garage_c = client(&g.endpoint);
    let gb = bucket(&garage_c, "boto-fid").await;
    multipart(&garage_c, &gb, "mp", &patterned(12 * MIB + 123, 3)).await;
    garage_c
        .put_object()
        .bucket(&gb)
        .key("secret")
        .body(ByteStream::from(data(70_000, 4)))
        .sse_customer_algorithm("AES256")
        .sse_customer_key(SSE_KEY)
        .sse_customer_key_md5(SSE_KEY_MD5)
        .send()
        .await
        .unwrap();
    let moto_c = moto_client(&moto().endpoint);
    let (mb, v1, _, _, _) = versioned(&moto_c).await;
    moto_c
        .put_object_tagging()
        .bucket(&mb)
        .key("obj")
        .version_id(&v1)
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("k").value("v").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let on_garage = Shoal::start(&config(g), s3_origin(&config(g)).await).await;
    let cfg = moto_config();
    let on_moto = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let mut cmd = std::process::Command::new("python3");
    for v in [
        "AWS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(v);
    }
    let out = tokio::task::spawn_blocking(move || {
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/boto3_fidelity.py"
        ))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env("GARAGE_ORIGIN", &g.endpoint)
        .env("GARAGE_SHOAL", &on_garage.base)
        .env("GARAGE_BUCKET", &gb)
        .env("MOTO_ORIGIN", &moto().endpoint)
        .env("MOTO_SHOAL", &on_moto.base)
        .env("MOTO_BUCKET", &mb)
        .env("VERSION", &v1)
        .env("SSE_KEY", SSE_KEY)
        .output()
        .map(|o| (o, on_garage, on_moto))
    })
    .await
    .unwrap();
    let (out, on_garage, on_moto) = out.expect("python3 with boto3 (make test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "boto3 suite failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    on_garage.stop().await;
    on_moto.stop().await;
    let _ = Duration::ZERO;
}
