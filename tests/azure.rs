//! The Azure Blob origin against Azurite (the Azure Storage emulator), seeded and listed by
//! Python's azure-storage-blob, and read through Shoal as if it were S3: raw HTTP, the Rust
//! SDK, boto3 and rclone.

mod common;

use aws_sdk_s3::error::ProvideErrorMetadata;
use common::azurite::{azurite, ACCOUNT, KEY};
use common::faulty::Faulty;
use common::*;
use shoal::config::{Config, OriginKind};
use std::process::Command;
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn azure_config() -> Config {
    let mut c = base_config();
    c.origin.kind = OriginKind::Azure;
    c.origin.id = "az".into();
    c.origin.endpoint = Some(azurite().endpoint.clone());
    c.origin.account = Some(ACCOUNT.into());
    c.origin.access_key = Some(KEY.into());
    c
}

fn python(args: &[&str], stdin: Option<String>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/azure_blobs.py"
    ))
    .args(args)
    .env("AZURE_CONNECTION_STRING", azurite().connection_string())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for v in [
        "AWS_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .spawn()
        .expect("python3 with azure-storage-blob (make test installs it)");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "azure_blobs.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A blob to seed: name, bytes, and JSON fields for azure_blobs.py.
struct Blob {
    name: &'static str,
    data: Vec<u8>,
    extra: &'static str,
}

/// Creates `container` with `blobs`, through Python's azure-storage-blob.
fn seed(container: &str, blobs: &[Blob]) {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<String> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = dir.path().join(i.to_string());
            std::fs::write(&p, &b.data).unwrap();
            let name = serde_json::to_string(b.name).unwrap();
            let extra = if b.extra.is_empty() {
                String::new()
            } else {
                format!(", {}", b.extra)
            };
            format!("{{\"name\": {name}, \"path\": \"{}\"{extra}}}", p.display())
        })
        .collect();
    python(
        &["upload", container],
        Some(format!("[{}]", specs.join(","))),
    );
}

fn container(hint: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{hint}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn start() -> (Shoal, Arc<Faulty>) {
    let cfg = azure_config();
    let origin = Faulty::new(shoal::app::build_origin(&cfg).await.unwrap());
    (Shoal::start(&cfg, origin.clone()).await, origin)
}

#[tokio::test]
async fn blobs_read_byte_exact_with_their_headers_and_metadata() {
    let c = container("az-read");
    let big = patterned(3 * MIB + 77, 21);
    seed(
        &c,
        &[
            Blob {
                name: "models/weights.bin",
                data: big.clone(),
                extra: r#""content_type": "application/x-weights", "cache_control": "max-age=60", "content_disposition": "attachment; filename=w.bin", "content_language": "en-GB", "metadata": {"team": "ml", "build": "42"}"#,
            },
            Blob {
                name: "a b/ünï+%.txt",
                data: b"odd names too".to_vec(),
                extra: "",
            },
        ],
    );
    let (shoal, origin) = start().await;
    let path = format!("{c}/models/weights.bin");
    for round in 0..2 {
        let r = shoal.get(&path).await;
        assert_eq!(r.status(), 200);
        if round == 1 {
            assert_eq!(r.headers()["x-shoal-cache"], "hit");
        }
        assert_eq!(r.bytes().await.unwrap()[..], big[..]);
    }
    assert_eq!(
        origin.gets_for("models/weights.bin").len(),
        4,
        "4 chunks, once each"
    );
    for (s, e) in [
        (0, 9),
        (MIB - 5, MIB + 5),
        (2 * MIB - 1, 3 * MIB + 76),
        (3 * MIB, 3 * MIB + 76),
    ] {
        let r = shoal.get_range(&path, &format!("bytes={s}-{e}")).await;
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {s}-{e}/{}", big.len()).as_str()
        );
        assert_eq!(r.bytes().await.unwrap()[..], big[s..=e]);
    }
    let h = shoal.http.head(shoal.url(&path)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let hv = |n: &str| h.headers()[n].to_str().unwrap().to_owned();
    assert_eq!(hv("content-length"), big.len().to_string());
    assert_eq!(hv("content-type"), "application/x-weights");
    assert_eq!(hv("cache-control"), "max-age=60");
    assert_eq!(hv("content-disposition"), "attachment; filename=w.bin");
    assert_eq!(hv("content-language"), "en-GB");
    assert_eq!(hv("x-amz-meta-team"), "ml");
    assert_eq!(hv("x-amz-meta-build"), "42");
    let etag = python(&["etag", &c, "models/weights.bin"], None);
    assert_eq!(hv("etag").trim_matches('"'), etag.trim_matches('"'));
    // Names that need encoding.
    let r = shoal
        .get(&format!(
            "{c}/{}",
            shoal::origin::url_encode("a b/ünï+%.txt")
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"odd names too");
    shoal.stop().await;
}

#[tokio::test]
async fn missing_blobs_containers_and_other_blob_types_answer_clearly() {
    let c = container("az-err");
    seed(
        &c,
        &[
            Blob {
                name: "block",
                data: vec![1; 100],
                extra: "",
            },
            Blob {
                name: "disk.vhd",
                data: vec![0; 1024],
                extra: r#""type": "page""#,
            },
            Blob {
                name: "log.txt",
                data: b"line\n".to_vec(),
                extra: r#""type": "append""#,
            },
        ],
    );
    let (shoal, origin) = start().await;
    let code = |t: &str| {
        t.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or("")
            .to_owned()
    };
    let r = shoal.get(&format!("{c}/missing")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.text().await.unwrap()), "NoSuchKey");
    let r = shoal.get_range(&format!("{c}/missing"), "bytes=3-4").await;
    assert_eq!(code(&r.text().await.unwrap()), "NoSuchKey");
    let r = shoal
        .get(&format!("no-such-container-{}/k", std::process::id()))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.text().await.unwrap()), "NoSuchBucket");
    for (name, kind) in [("disk.vhd", "PageBlob"), ("log.txt", "AppendBlob")] {
        let heads = origin.heads();
        for _ in 0..2 {
            let r = shoal.get_range(&format!("{c}/{name}"), "bytes=0-9").await;
            assert_eq!(r.status(), 501, "{name}");
            let t = r.text().await.unwrap();
            assert_eq!(code(&t), "NotImplemented");
            assert!(t.contains(kind), "{t}");
        }
        assert_eq!(
            origin.heads(),
            heads + 1,
            "the refusal is negatively cached"
        );
    }
    shoal.stop().await;
}

#[tokio::test]
async fn list_v2_with_a_delimiter_and_paging_matches_the_blob_listing() {
    let c = container("az-list");
    let names = [
        "data/2024/a.parquet",
        "data/2024/b.parquet",
        "data/2025/c.parquet",
        "data/readme.md",
        "data/z.csv",
        "other/x",
        "top.txt",
    ];
    let blobs: Vec<Blob> = names
        .iter()
        .map(|n| Blob {
            name: n,
            data: n.as_bytes().to_vec(),
            extra: "",
        })
        .collect();
    seed(&c, &blobs);
    let (shoal, _) = start().await;
    let via = client(&shoal.base);
    for (prefix, delimiter) in [
        ("", "/"),
        ("data/", "/"),
        ("data/", ""),
        ("data/2024/", "/"),
    ] {
        let want: serde_json::Value =
            serde_json::from_str(&python(&["list", &c, prefix, delimiter], None)).unwrap();
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let out = via
                .list_objects_v2()
                .bucket(&c)
                .prefix(prefix)
                .set_delimiter((!delimiter.is_empty()).then(|| delimiter.to_owned()))
                .max_keys(2)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            pages += 1;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            prefixes.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
            for o in out.contents() {
                assert_eq!(o.size(), Some(o.key().unwrap().len() as i64));
                assert!(o.e_tag().is_some() && o.last_modified().is_some());
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(keys, strs(&want["blobs"]), "{prefix:?} {delimiter:?}");
        assert_eq!(
            prefixes,
            strs(&want["prefixes"]),
            "{prefix:?} {delimiter:?}"
        );
        assert!(pages >= 2 || keys.len() + prefixes.len() <= 2, "paged");
    }
    // V1 with a marker, and encoding-type=url.
    let out = via
        .list_objects()
        .bucket(&c)
        .prefix("data/")
        .max_keys(3)
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 3);
    assert_eq!(out.is_truncated(), Some(true));
    let rest = via
        .list_objects()
        .bucket(&c)
        .prefix("data/")
        .marker(out.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.contents().len(), 2);
    // encoding-type=url: keys, prefixes and the echoed prefix come back URL-encoded.
    let out = via
        .list_objects_v2()
        .bucket(&c)
        .prefix("data/")
        .delimiter("/")
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.prefix(), Some("data/"));
    let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["data/readme.md", "data/z.csv"]);
    let e = via
        .list_objects_v2()
        .bucket("no-such-container-at-all")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NoSuchBucket"));
    shoal.stop().await;
}

#[tokio::test]
async fn an_overwrite_is_seen_once_the_old_version_is_invalidated() {
    let c = container("az-over");
    let (a, b) = (patterned(2 * MIB + 3, 31), patterned(2 * MIB + 3, 32));
    seed(
        &c,
        &[Blob {
            name: "obj",
            data: a.clone(),
            extra: "",
        }],
    );
    let (shoal, _) = start().await;
    let path = format!("{c}/obj");
    // Only chunk 0 is read (and stored); the metadata of this version is cached.
    let r = shoal.get_range(&path, "bytes=0-9").await;
    assert_eq!(r.bytes().await.unwrap()[..], a[..10]);
    let old = python(&["etag", &c, "obj"], None);
    seed(
        &c,
        &[Blob {
            name: "obj",
            data: b.clone(),
            extra: "",
        }],
    );
    assert_ne!(python(&["etag", &c, "obj"], None), old, "a new ETag");
    // Chunk 1 is not stored: its read is pinned to the old ETag, Azure refuses it
    // (ConditionNotMet), the old metadata is forgotten, and the GET is answered with the new
    // version — before any byte was sent, so cleanly.
    let r = shoal.get_range(&path, "bytes=1048576-1048600").await;
    assert_eq!(r.status(), 206);
    let etag = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert_eq!(etag, python(&["etag", &c, "obj"], None).trim_matches('"'));
    assert_eq!(r.bytes().await.unwrap()[..], b[1048576..=1048600]);
    assert_eq!(shoal.get(&path).await.bytes().await.unwrap()[..], b[..]);
    shoal.stop().await;
}

#[tokio::test]
async fn a_sas_token_works_instead_of_the_key_and_a_wrong_key_is_the_origins_fault() {
    let c = container("az-sas");
    seed(
        &c,
        &[Blob {
            name: "k",
            data: b"via a SAS".to_vec(),
            extra: "",
        }],
    );
    let mut cfg = azure_config();
    cfg.origin.access_key = None;
    cfg.origin.sas_token = Some(python(&["sas", &c], None).into());
    let shoal = Shoal::start(&cfg, shoal::app::build_origin(&cfg).await.unwrap()).await;
    let r = shoal.get(&format!("{c}/k")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"via a SAS");
    let listed = client(&shoal.base)
        .list_objects_v2()
        .bucket(&c)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 1);
    shoal.stop().await;
    // A wrong account key: Azure refuses Shoal, which says so (502, not the client's fault).
    let mut cfg = azure_config();
    cfg.origin.access_key = Some("d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=".into());
    let shoal = Shoal::start(&cfg, shoal::app::build_origin(&cfg).await.unwrap()).await;
    let r = shoal.get(&format!("{c}/k")).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("OriginUnauthorized"));
    shoal.stop().await;
}

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
    c.env("AWS_ACCESS_KEY_ID", "any")
        .env("AWS_SECRET_ACCESS_KEY", "any")
        .env("AWS_REGION", "us-east-1");
    c
}

#[tokio::test]
async fn boto3_and_rclone_read_azure_blobs_as_s3() {
    let c = container("az-tools");
    let big = patterned(2 * MIB + 11, 41);
    seed(
        &c,
        &[
            Blob {
                name: "dir/big.bin",
                data: big.clone(),
                extra: "",
            },
            Blob {
                name: "dir/small.txt",
                data: b"hello azure".to_vec(),
                extra: "",
            },
        ],
    );
    let (shoal, _) = start().await;
    let base = shoal.base.clone();
    let cc = c.clone();
    let script = format!(
        r#"
import boto3, hashlib
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="{base}", config=Config(s3={{"addressing_style": "path"}}))
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="{cc}", Prefix="dir/")["Contents"]]
assert keys == ["dir/big.bin", "dir/small.txt"], keys
body = s3.get_object(Bucket="{cc}", Key="dir/big.bin")["Body"].read()
print(len(body), hashlib.sha256(body).hexdigest())
print(s3.get_object(Bucket="{cc}", Key="dir/small.txt", Range="bytes=6-10")["Body"].read().decode())
"#
    );
    let out = tokio::task::spawn_blocking(move || tool("python3").args(["-c", &script]).output())
        .await
        .unwrap()
        .expect("python3 with boto3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(text.contains(&format!("{} {digest}", big.len())), "{text}");
    assert!(text.contains("azure"), "{text}");
    // rclone, configured by environment for an S3 remote at Shoal.
    let base = shoal.base.clone();
    let cc = c.clone();
    let out = tokio::task::spawn_blocking(move || {
        tool("rclone")
            .args(["cat", &format!("shoal:{cc}/dir/small.txt")])
            .env("RCLONE_CONFIG_SHOAL_TYPE", "s3")
            .env("RCLONE_CONFIG_SHOAL_PROVIDER", "Other")
            .env("RCLONE_CONFIG_SHOAL_ENDPOINT", &base)
            .env("RCLONE_CONFIG_SHOAL_ACCESS_KEY_ID", "any")
            .env("RCLONE_CONFIG_SHOAL_SECRET_ACCESS_KEY", "any")
            .env("RCLONE_CONFIG_SHOAL_FORCE_PATH_STYLE", "true")
            .output()
    })
    .await
    .unwrap()
    .expect("rclone (make test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello azure");
    let base = shoal.base.clone();
    let cc = c.clone();
    let out = tokio::task::spawn_blocking(move || {
        tool("rclone")
            .args(["lsf", "-R", &format!("shoal:{cc}")])
            .env("RCLONE_CONFIG_SHOAL_TYPE", "s3")
            .env("RCLONE_CONFIG_SHOAL_PROVIDER", "Other")
            .env("RCLONE_CONFIG_SHOAL_ENDPOINT", &base)
            .env("RCLONE_CONFIG_SHOAL_ACCESS_KEY_ID", "any")
            .env("RCLONE_CONFIG_SHOAL_SECRET_ACCESS_KEY", "any")
            .env("RCLONE_CONFIG_SHOAL_FORCE_PATH_STYLE", "true")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, ["dir/", "dir/big.bin", "dir/small.txt"]);
    shoal.stop().await;
}
