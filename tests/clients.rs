//! Client compatibility: real S3 clients against Shoal in front of a real S3 server, each
//! answer compared with the origin's own answer to the same request.
//!
//! Where Shoal deliberately differs from the origin (Garage), the difference is listed next
//! to the check, with the reason, and Shoal's side is checked against SPEC.md.

mod common;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::Client;
use common::*;
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Keys that stress encoding: spaces, `+`, `%`, unicode, `//`, a trailing dot.
const ODD_KEYS: &[&str] = &[
    "plain.txt",
    "with space.bin",
    "plus+sign",
    "percent%25literal",
    "ünïcødé/文件.dat",
    "double//slash",
    "dir/a",
    "dir/b",
    "dir/sub/c",
    "tilde~and=equals&amp",
];

struct Fixture {
    origin: Client,
    via: Client,
    shoal: Shoal,
    bucket: String,
}

async fn fixture(hint: &str) -> Fixture {
    let g = garage();
    let origin = client(&g.endpoint);
    let bucket = bucket(&origin, hint).await;
    for (i, k) in ODD_KEYS.iter().enumerate() {
        put(&origin, &bucket, k, data(1000 + i * 37, i as u64)).await;
    }
    origin
        .put_object()
        .bucket(&bucket)
        .key("meta.json")
        .body(aws_sdk_s3::primitives::ByteStream::from(
            b"{\"a\":1}".to_vec(),
        ))
        .content_type("application/json")
        .cache_control("max-age=60")
        .content_disposition("attachment; filename=\"m.json\"")
        .content_encoding("identity")
        .content_language("en-GB")
        .metadata("owner", "team-a")
        .metadata("build", "42")
        .send()
        .await
        .unwrap();
    put(&origin, &bucket, "big.bin", data(5 * MIB + 3, 99)).await;
    put(&origin, &bucket, "empty", Vec::new()).await;
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let via = client(&shoal.base);
    Fixture {
        origin,
        via,
        shoal,
        bucket,
    }
}

/// A GetObject answer reduced to what a client sees.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok {
        content_range: Option<String>,
        content_length: Option<i64>,
        body: Vec<u8>,
    },
    Err {
        status: Option<u16>,
        code: Option<String>,
    },
}

async fn answer(
    r: Result<
        aws_sdk_s3::operation::get_object::GetObjectOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::get_object::GetObjectError>,
    >,
) -> Answer {
    match r {
        Ok(o) => Answer::Ok {
            content_range: o.content_range().map(str::to_owned),
            content_length: o.content_length(),
            body: o.body.collect().await.unwrap().to_vec(),
        },
        Err(e) => Answer::Err {
            status: e.raw_response().map(|r| r.status().as_u16()),
            code: e.code().map(str::to_owned),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_table_matches_the_origin() {
    let f = fixture("ranges").await;
    let size = 5 * MIB + 3;
    let ranges: Vec<String> = vec![
        "bytes=0-0".into(),
        "bytes=0-99".into(),
        "bytes=100-199".into(),
        format!("bytes={}-{}", MIB - 1, MIB),
        format!("bytes={}-{}", MIB - 10, 3 * MIB + 10),
        format!("bytes={}-{}", size - 1, size - 1),
        format!("bytes=0-{}", size - 1),
        format!("bytes=0-{}", size),
        "bytes=0-999999999999".into(),
        "bytes=5-".into(),
        format!("bytes={}-", size - 10),
        "bytes=-1".into(),
        "bytes=-100".into(),
        format!("bytes=-{size}"),
        format!("bytes=-{}", size + 100),
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 5, size + 10),
        "bytes=99999999999999999-".into(),
        "bytes=-0".into(),
        "foo=1-2".into(),
        "bytes=5-1".into(),
        "bytes=".into(),
        "bytes=-".into(),
        "bytes=0-1,4-5".into(),
        "bytes=a-b".into(),
        "bytes=1-b".into(),
        "bytes=--1".into(),
        "bytes 0-1".into(),
        "bytes=0x10-20".into(),
        "bytes=+1-2".into(),
        "bytes=,".into(),
        "Bytes=0-1".into(),
    ];
    assert!(ranges.len() >= 30);
    let mut differences = Vec::new();
    for key in ["big.bin", "empty"] {
        for h in &ranges {
            let get = |c: &Client| {
                c.get_object()
                    .bucket(&f.bucket)
                    .key(key)
                    .range(h.clone())
                    .send()
            };
            let s = answer(get(&f.via).await).await;
            let o = answer(get(&f.origin).await).await;
            if s != o {
                let why = known_range_difference(key, h, &s, &o).unwrap_or_else(|| {
                    panic!(
                        "unexpected difference from the origin: {key} {h}: shoal {} / origin {}",
                        short(&s),
                        short(&o)
                    )
                });
                differences.push(format!(
                    "{key} {h}: shoal {} / origin {} — {why}",
                    short(&s),
                    short(&o)
                ));
            }
            // Whatever the origin does, Shoal follows SPEC §1.2.
            let obj_size = if key == "empty" { 0 } else { size as u64 };
            let want = shoal::s3::range::resolve(shoal::s3::range::parse(h), obj_size);
            match (want, &s) {
                (
                    shoal::s3::range::Resolved::Full,
                    Answer::Ok {
                        content_range: None,
                        content_length,
                        ..
                    },
                ) => {
                    assert_eq!(*content_length, Some(obj_size as i64), "{key} {h}")
                }
                (
                    shoal::s3::range::Resolved::Partial(a, b),
                    Answer::Ok {
                        content_range: Some(cr),
                        body,
                        ..
                    },
                ) => {
                    assert_eq!(cr, &format!("bytes {a}-{b}/{obj_size}"), "{key} {h}");
                    assert!(
                        body[..] == data(size, 99)[a as usize..=b as usize],
                        "{key} {h}"
                    );
                }
                (
                    shoal::s3::range::Resolved::Unsatisfiable,
                    Answer::Err {
                        status: Some(416),
                        code,
                    },
                ) => {
                    assert_eq!(code.as_deref(), Some("InvalidRange"), "{key} {h}")
                }
                (w, got) => panic!("{key} {h}: expected {w:?}, got {}", short(got)),
            }
        }
    }
    // The full list is printed for the closing note of the S3-fidelity work.
    println!(
        "range differences from the origin ({}):\n{}",
        differences.len(),
        differences.join("\n")
    );
    f.shoal.stop().await;
}

/// The two ways Garage answers a Range unlike S3. Shoal follows S3 (SPEC §1.2) in both.
fn known_range_difference(key: &str, h: &str, s: &Answer, o: &Answer) -> Option<&'static str> {
    let malformed = shoal::s3::range::parse(h).is_none();
    match (s, o) {
        // S3 ignores a Range it cannot parse and sends the whole object; Garage answers 416.
        (
            Answer::Ok {
                content_range: None,
                ..
            },
            Answer::Err {
                status: Some(416), ..
            },
        ) if malformed => Some("Garage rejects a malformed Range; S3 ignores it"),
        // A suffix Range on an empty object: S3 says 416; Garage answers 206 with an
        // underflowed Content-Range (`bytes 0-18446744073709551615/0`).
        (
            Answer::Err {
                status: Some(416), ..
            },
            Answer::Ok {
                content_range: Some(cr),
                ..
            },
        ) if key == "empty" && h.starts_with("bytes=-") && cr.ends_with("/0") => {
            Some("Garage answers a suffix Range on an empty object with a broken 206")
        }
        _ => None,
    }
}

fn short(a: &Answer) -> String {
    match a {
        Answer::Ok {
            content_range,
            content_length,
            ..
        } => format!("ok({content_range:?}, {content_length:?})"),
        Answer::Err { status, code } => format!("err({status:?}, {code:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_matrix_matches_the_origin() {
    let f = fixture("cond").await;
    let head = f
        .origin
        .head_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap().to_owned();
    let lm = head.last_modified().unwrap().secs();
    let before = DateTime::from_secs(lm - 3600);
    let after = DateTime::from_secs(lm + 3600);
    let im = [None, Some(etag.clone()), Some("\"nope\"".to_string())];
    let inm = [None, Some("\"nope\"".to_string()), Some(etag.clone())];
    let ims = [None, Some(before), Some(after)];
    let ius = [None, Some(after), Some(before)];
    let mut n = 0;
    for a in &im {
        for b in &inm {
            for c in &ims {
                for d in &ius {
                    let get = |cl: &Client| {
                        cl.get_object()
                            .bucket(&f.bucket)
                            .key("plain.txt")
                            .set_if_match(a.clone())
                            .set_if_none_match(b.clone())
                            .set_if_modified_since(*c)
                            .set_if_unmodified_since(*d)
                            .send()
                    };
                    let s = answer(get(&f.via).await).await;
                    let o = answer(get(&f.origin).await).await;
                    let status = |x: &Answer| match x {
                        Answer::Ok { .. } => 200,
                        Answer::Err { status, .. } => status.unwrap_or(0),
                    };
                    assert_eq!(
                        status(&s),
                        status(&o),
                        "If-Match {a:?} If-None-Match {b:?} IMS {c:?} IUS {d:?}"
                    );
                    if status(&s) == 412 {
                        assert_eq!(
                            s,
                            Answer::Err {
                                status: Some(412),
                                code: Some("PreconditionFailed".into())
                            }
                        );
                    }
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 81);
    f.shoal.stop().await;
}

/// The five headers a GET's `response-*` parameters can override, as Shoal and the origin sent
/// them.
fn same_overridable_headers(
    s: &aws_sdk_s3::operation::get_object::GetObjectOutput,
    o: &aws_sdk_s3::operation::get_object::GetObjectOutput,
) {
    assert_eq!(s.content_type(), o.content_type());
    assert_eq!(s.cache_control(), o.cache_control());
    assert_eq!(s.content_disposition(), o.content_disposition());
    assert_eq!(s.content_language(), o.content_language());
    assert_eq!(s.content_encoding(), o.content_encoding());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_headers_and_overrides_match_the_origin() {
    let f = fixture("headers").await;
    let get = |c: &Client| {
        c.get_object()
            .bucket(&f.bucket)
            .key("meta.json")
            .response_content_type("text/plain")
            .response_cache_control("no-store")
            .response_content_disposition("inline")
            .response_content_language("fr")
            .response_content_encoding("gzip")
            .send()
    };
    let s = get(&f.via).await.unwrap();
    let o = get(&f.origin).await.unwrap();
    assert_eq!(s.content_type(), Some("text/plain"));
    same_overridable_headers(&s, &o);
    // The overrides were for that request only, though it was the object's first: the
    // object's own headers (which Shoal prepares once per cached metadata) come back
    // unchanged on the next GET and on the HEADs below.
    let plain = |c: &Client| c.get_object().bucket(&f.bucket).key("meta.json").send();
    let s = plain(&f.via).await.unwrap();
    let o = plain(&f.origin).await.unwrap();
    assert_ne!(s.content_type(), Some("text/plain"));
    same_overridable_headers(&s, &o);
    assert_eq!(s.e_tag(), o.e_tag());
    assert_eq!(s.metadata(), o.metadata());
    for key in ["meta.json", "plain.txt", "empty"] {
        let s = f
            .via
            .head_object()
            .bucket(&f.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let o = f
            .origin
            .head_object()
            .bucket(&f.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(s.content_length(), o.content_length(), "{key}");
        assert_eq!(s.e_tag(), o.e_tag(), "{key}");
        assert_eq!(s.content_type(), o.content_type(), "{key}");
        assert_eq!(s.last_modified(), o.last_modified(), "{key}");
        assert_eq!(s.cache_control(), o.cache_control(), "{key}");
        assert_eq!(s.content_disposition(), o.content_disposition(), "{key}");
        assert_eq!(s.content_encoding(), o.content_encoding(), "{key}");
        assert_eq!(s.content_language(), o.content_language(), "{key}");
        assert_eq!(s.metadata(), o.metadata(), "{key}");
        assert_eq!(s.accept_ranges(), Some("bytes"));
    }
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_errors_from_the_rust_sdk() {
    let f = fixture("errors").await;
    // GET of a missing key: NoSuchKey, typed, on both.
    for c in [&f.via, &f.origin] {
        let e = c
            .get_object()
            .bucket(&f.bucket)
            .key("missing")
            .send()
            .await
            .unwrap_err();
        assert!(
            e.as_service_error().is_some_and(|s| s.is_no_such_key()),
            "{e:?}"
        );
    }
    // HEAD of a missing key: NotFound, typed, on both.
    for c in [&f.via, &f.origin] {
        let e = c
            .head_object()
            .bucket(&f.bucket)
            .key("missing")
            .send()
            .await
            .unwrap_err();
        assert!(
            e.as_service_error().is_some_and(|s| s.is_not_found()),
            "{e:?}"
        );
    }
    // InvalidRange with the object size and Content-Range: bytes */size.
    let e = f
        .via
        .get_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .range("bytes=5000-")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidRange"));
    assert_eq!(
        e.raw_response().unwrap().headers().get("content-range"),
        Some("bytes */1000")
    );
    // PreconditionFailed and NotModified.
    let e = f
        .via
        .get_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .if_match("\"x\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("PreconditionFailed"));
    let etag = f
        .via
        .head_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    let e = f
        .via
        .get_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .if_none_match(etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 304);
    // ListBuckets without an allowlist: what the origin credentials can see.
    let names = |c: &Client| {
        let c = c.clone();
        async move {
            let mut v: Vec<String> = c
                .list_buckets()
                .send()
                .await
                .unwrap()
                .buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_owned))
                .collect();
            v.sort();
            v
        }
    };
    // Other tests create buckets meanwhile: the origin's list before ⊆ Shoal's ⊆ after.
    let before = names(&f.origin).await;
    let mine = names(&f.via).await;
    let after = names(&f.origin).await;
    assert!(mine.contains(&f.bucket));
    assert!(
        before.iter().all(|b| mine.contains(b)),
        "{before:?} ⊄ {mine:?}"
    );
    assert!(
        mine.iter().all(|b| after.contains(b)),
        "{mine:?} ⊄ {after:?}"
    );
    // Writes: MethodNotAllowed. Unsupported reads: NotImplemented, naming the operation.
    let e = f
        .via
        .put_object()
        .bucket(&f.bucket)
        .key("x")
        .body(vec![1u8].into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("MethodNotAllowed"));
    let e = f
        .via
        .delete_object()
        .bucket(&f.bucket)
        .key("plain.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("MethodNotAllowed"));
    // ACLs are passed to the origin, which (Garage) does not implement them: its own error.
    let e = f
        .via
        .get_object_acl()
        .bucket(&f.bucket)
        .key("plain.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NotImplemented"));
    assert!(e.message().unwrap_or("").contains("GetObjectAcl"), "{e:?}");
    // Every error names its request id, in the envelope and the header alike.
    let e = f
        .via
        .get_object()
        .bucket(&f.bucket)
        .key("missing")
        .send()
        .await
        .unwrap_err();
    let raw = e.raw_response().unwrap();
    let header = raw.headers().get("x-amz-request-id").unwrap().to_owned();
    let body = std::str::from_utf8(raw.body().bytes().unwrap()).unwrap();
    assert!(
        body.contains(&format!("<RequestId>{header}</RequestId>")),
        "{body}"
    );
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_v1_and_v2_match_the_origin_field_for_field() {
    let f = fixture("lists").await;
    type V2 = aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
    fn v2(x: &V2) -> String {
        let c: Vec<_> = x
            .contents()
            .iter()
            .map(|o| {
                (
                    o.key(),
                    o.e_tag(),
                    o.size(),
                    o.last_modified(),
                    o.storage_class(),
                    o.owner().map(|w| w.id()),
                )
            })
            .collect();
        let p: Vec<_> = x.common_prefixes().iter().map(|p| p.prefix()).collect();
        format!(
            "name={:?} prefix={:?} delim={:?} max={:?} count={:?} trunc={:?} ct={:?} sa={:?} enc={:?} contents={c:?} prefixes={p:?}",
            x.name(), x.prefix(), x.delimiter(), x.max_keys(), x.key_count(), x.is_truncated(),
            x.continuation_token(), x.start_after(), x.encoding_type()
        )
    }
    /// prefix, delimiter, max-keys, start-after, encoding-type=url, fetch-owner
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<i32>,
        Option<&'a str>,
        bool,
        bool,
    );
    let cases: Vec<Case> = vec![
        (None, None, None, None, false, false),
        (None, Some("/"), None, None, false, false),
        (Some("dir/"), Some("/"), None, None, false, false),
        (None, None, Some(3), None, false, false),
        (None, Some("/"), Some(2), None, true, false),
        (None, None, None, Some("dir/a"), false, false),
        (Some("ü"), None, None, None, true, false),
        (None, None, Some(0), None, false, false),
        (None, None, None, None, false, true),
    ];
    for (prefix, delim, max, start_after, url, owner) in cases {
        let (mut ts, mut to) = (None::<String>, None::<String>);
        for page in 0.. {
            let req = |c: &Client, tok: Option<String>| {
                let mut r = c
                    .list_objects_v2()
                    .bucket(&f.bucket)
                    .set_prefix(prefix.map(str::to_owned))
                    .set_delimiter(delim.map(str::to_owned))
                    .set_max_keys(max)
                    .set_start_after(start_after.map(str::to_owned))
                    .set_continuation_token(tok)
                    .fetch_owner(owner);
                if url {
                    r = r.encoding_type(aws_sdk_s3::types::EncodingType::Url);
                }
                r.send()
            };
            let s = req(&f.via, ts.clone()).await.unwrap();
            let o = req(&f.origin, to.clone()).await.unwrap();
            // Continuation tokens are opaque and passed through; they are not compared.
            let strip = |x: String| {
                x.split(" ct=").next().unwrap().to_owned() + &x[x.find(" sa=").unwrap()..]
            };
            assert_eq!(
                strip(v2(&s)),
                strip(v2(&o)),
                "page {page} {prefix:?} {delim:?} {max:?} {start_after:?} url={url} owner={owner}"
            );
            if o.is_truncated() != Some(true) {
                break;
            }
            ts = s.next_continuation_token().map(str::to_owned);
            to = o.next_continuation_token().map(str::to_owned);
            assert!(page < 30);
        }
    }
    // V1 with markers.
    for (delim, max) in [(None, 3), (Some("/"), 2)] {
        let (mut ms, mut mo) = (None::<String>, None::<String>);
        for page in 0.. {
            let req = |c: &Client, m: Option<String>| {
                c.list_objects()
                    .bucket(&f.bucket)
                    .set_delimiter(delim.map(str::to_owned))
                    .max_keys(max)
                    .set_marker(m)
                    .send()
            };
            let s = req(&f.via, ms.clone()).await.unwrap();
            let o = req(&f.origin, mo.clone()).await.unwrap();
            let fields = |x: &aws_sdk_s3::operation::list_objects::ListObjectsOutput| {
                format!(
                    "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                    x.name(),
                    x.prefix(),
                    x.marker(),
                    x.next_marker(),
                    x.max_keys(),
                    x.is_truncated(),
                    x.contents()
                        .iter()
                        .map(|o| (o.key(), o.e_tag(), o.size(), o.last_modified()))
                        .collect::<Vec<_>>(),
                    x.common_prefixes()
                        .iter()
                        .map(|p| p.prefix())
                        .collect::<Vec<_>>()
                )
            };
            assert_eq!(fields(&s), fields(&o), "v1 page {page} {delim:?} {max}");
            if o.is_truncated() != Some(true) {
                break;
            }
            let next = |x: &aws_sdk_s3::operation::list_objects::ListObjectsOutput| {
                x.next_marker()
                    .map(str::to_owned)
                    .or_else(|| x.contents().last().and_then(|c| c.key()).map(str::to_owned))
            };
            ms = next(&s);
            mo = next(&o);
            assert!(page < 30);
        }
    }
    // Every odd key reads back byte for byte through Shoal.
    for (i, k) in ODD_KEYS.iter().enumerate() {
        let got = f
            .via
            .get_object()
            .bucket(&f.bucket)
            .key(*k)
            .send()
            .await
            .unwrap();
        let got = got.body.collect().await.unwrap().to_vec();
        assert!(got == data(1000 + i * 37, i as u64), "{k}");
    }
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buckets_allowlist_and_virtual_hosts() {
    let g = garage();
    let origin = client(&g.endpoint);
    let allowed = bucket(&origin, "allowed").await;
    let other = bucket(&origin, "other").await;
    put(&origin, &allowed, "k", data(100, 1)).await;
    put(&origin, &other, "k", data(100, 2)).await;
    let mut cfg = config(g);
    cfg.origin.buckets = vec![allowed.clone(), "absent-bucket".into()];
    cfg.server.domain = Some("s3.shoal.test".into());
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let via = client(&shoal.base);
    // HeadBucket, GetBucketLocation, ListBuckets.
    via.head_bucket().bucket(&allowed).send().await.unwrap();
    let e = via
        .head_bucket()
        .bucket("absent-bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 404);
    let e2 = origin
        .head_bucket()
        .bucket("absent-bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e2.raw_response().unwrap().status().as_u16(), 404);
    let loc = via
        .get_bucket_location()
        .bucket(&allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(loc.location_constraint().map(|l| l.as_str()), Some(REGION));
    let names: Vec<_> = via
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_owned))
        .collect();
    // In name order, as S3 lists them.
    assert_eq!(names, vec!["absent-bucket".to_string(), allowed.clone()]);
    // Outside the allowlist: 403 AccessDenied for every operation.
    let e = via
        .get_object()
        .bucket(&other)
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    let e = via
        .list_objects_v2()
        .bucket(&other)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    let e = via.head_bucket().bucket(&other).send().await.unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);
    // Virtual-hosted style.
    let r = shoal
        .http
        .get(shoal.url("k"))
        .header("host", format!("{allowed}.s3.shoal.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == data(100, 1)[..]);
    let r = shoal
        .http
        .get(shoal.url("k"))
        .header("host", format!("{other}.s3.shoal.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_clear_4xx_and_never_break_the_server() {
    let f = fixture("hostile").await;
    let b = &f.bucket;
    let long_key = "k".repeat(10 * 1024);
    /// path, headers, expected status, expected S3 error code
    type Case<'a> = (String, Vec<(&'a str, String)>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            format!("{b}/{long_key}"),
            vec![],
            400,
            Some("KeyTooLongError"),
        ),
        (format!("{b}/%zz"), vec![], 400, Some("InvalidArgument")),
        (format!("{b}/abc%"), vec![], 400, Some("InvalidArgument")),
        (format!("{b}/%C3%28"), vec![], 400, Some("InvalidArgument")),
        (
            format!("{b}/plain.txt"),
            vec![("range", "bytes=99999999999999999999999999-".into())],
            416,
            Some("InvalidRange"),
        ),
        (
            format!("{b}/plain.txt"),
            vec![("range", format!("bytes=0-{}", "9".repeat(200)))],
            206,
            None,
        ),
        (
            format!("{b}/plain.txt"),
            vec![("if-modified-since", "not a date".into())],
            200,
            None,
        ),
        (
            format!("{b}/plain.txt"),
            vec![("x-big", "v".repeat(64 * 1024))],
            400,
            Some("RequestHeaderSectionTooLarge"),
        ),
        (
            format!("{b}?max-keys=-1"),
            vec![],
            400,
            Some("InvalidArgument"),
        ),
        (
            format!("{b}?max-keys=lots"),
            vec![],
            400,
            Some("InvalidArgument"),
        ),
        (
            format!("{b}?encoding-type=base64"),
            vec![],
            400,
            Some("InvalidArgument"),
        ),
        (
            format!("{b}?list-type=3"),
            vec![],
            400,
            Some("InvalidArgument"),
        ),
        (
            format!("{b}?not-a-subresource"),
            vec![],
            501,
            Some("NotImplemented"),
        ),
    ];
    for (path, headers, status, code) in cases {
        let mut r = f.shoal.http.get(f.shoal.url(&path));
        for (k, v) in &headers {
            r = r.header(*k, v);
        }
        let resp = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: connection failed: {e}"));
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{}",
            &path[..path.len().min(80)]
        );
        if let Some(code) = code {
            let body = resp.text().await.unwrap();
            assert!(body.contains(&format!("<Code>{code}</Code>")), "{body}");
        }
    }
    // `..` segments, sent raw (HTTP clients normalise them away): never a file outside the
    // store, never a panic; the key is simply not there.
    for path in [
        format!("/{b}/../../etc/passwd"),
        format!("/{b}/dir/../../x"),
        format!("/{b}/./plain.txt"),
    ] {
        let (status, body) = raw_get(f.shoal.running.s3_addr, &path).await;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(body.contains("<Code>"), "{path}: {body}");
    }
    // Still healthy and still serving.
    let r = f.shoal.get(&format!("{b}/plain.txt")).await;
    assert_eq!(r.status(), 200);
    let ops = format!("http://{}/healthz", f.shoal.running.ops_addr);
    assert_eq!(reqwest::get(ops).await.unwrap().status(), 200);
    f.shoal.stop().await;
}

/// A GET written by hand on a raw connection, so the path reaches Shoal exactly as given.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    common::raw_get(
        &addr.to_string(),
        path,
        &[("host".into(), addr.to_string())],
    )
    .await
}

/// Runs a command without the CA-bundle variables of this machine (they break plain-HTTP
/// loopback endpoints for some tools) and with the test credentials.
fn tool(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    for v in [
        "AWS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        c.env_remove(v);
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boto3_agrees_with_the_origin() {
    let f = fixture("boto").await;
    let keys: Vec<&str> = ODD_KEYS
        .iter()
        .copied()
        .chain(["meta.json", "empty"])
        .collect();
    let out = tool("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/boto3_compat.py"
        ))
        .env("SHOAL_ENDPOINT", &f.shoal.base)
        .env("ORIGIN_ENDPOINT", &garage().endpoint)
        .env("BUCKET", &f.bucket)
        .env("KEYS", keys.join("\n"))
        .env("BIG_KEY", "big.bin")
        .output()
        .expect("python3 with boto3 (make test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "boto3 suite failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rclone_cat_lsf_and_copy_are_byte_exact() {
    let f = fixture("rclone").await;
    let remote = |c: &mut Command, endpoint: &str| {
        c.env("RCLONE_CONFIG_R_TYPE", "s3")
            .env("RCLONE_CONFIG_R_PROVIDER", "Other")
            .env("RCLONE_CONFIG_R_ENDPOINT", endpoint)
            .env("RCLONE_CONFIG_R_ACCESS_KEY_ID", ACCESS_KEY)
            .env("RCLONE_CONFIG_R_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RCLONE_CONFIG_R_REGION", REGION)
            .env("RCLONE_CONFIG_R_FORCE_PATH_STYLE", "true")
            .env("RCLONE_CONFIG", "/dev/null");
    };
    let run = |args: &[&str], endpoint: &str| -> Vec<u8> {
        let mut c = tool("rclone");
        remote(&mut c, endpoint);
        let out = c
            .args(args)
            .output()
            .expect("rclone (make test installs it)");
        assert!(
            out.status.success(),
            "rclone {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let b = &f.bucket;
    let (s, o) = (f.shoal.base.as_str(), garage().endpoint.as_str());
    // cat: byte for byte, whole and ranged.
    let got = run(&["cat", &format!("r:{b}/big.bin")], s);
    assert!(got == data(5 * MIB + 3, 99), "rclone cat");
    let got = run(
        &[
            "cat",
            "--offset",
            "1048570",
            "--count",
            "20",
            &format!("r:{b}/big.bin"),
        ],
        s,
    );
    assert!(got[..] == data(5 * MIB + 3, 99)[1048570..1048590]);
    // lsf: the same listing as the origin's.
    for args in [
        vec!["lsf", "-R"],
        vec!["lsf"],
        vec!["lsf", "--format", "psh", "-R"],
    ] {
        let mut a = args.clone();
        let target = format!("r:{b}");
        a.push(&target);
        assert_eq!(
            String::from_utf8_lossy(&run(&a, s)),
            String::from_utf8_lossy(&run(&a, o)),
            "{args:?}"
        );
    }
    // copy: a whole tree, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("copy");
    run(&["copy", &format!("r:{b}"), dest.to_str().unwrap()], s);
    for (i, k) in ODD_KEYS.iter().enumerate() {
        if k.contains("//") {
            continue; // rclone maps `a//b` to a local name of its own; `check` covers it below
        }
        let got = std::fs::read(dest.join(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert!(got == data(1000 + i * 37, i as u64), "{k}");
    }
    assert!(std::fs::read(dest.join("big.bin")).unwrap() == data(5 * MIB + 3, 99));
    // rclone check (MD5 against the ETags) of the copy, against Shoal and against the origin.
    run(&["check", &format!("r:{b}"), dest.to_str().unwrap()], s);
    run(&["check", &format!("r:{b}"), dest.to_str().unwrap()], o);
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.shoal.stop().await;
}
