//! Client authentication (SPEC §1.5) with real clients — the AWS SDK for Rust, boto3, the AWS
//! CLI, rclone and curl — against Shoal with `auth.mode = "sigv4"`, in front of the real S3
//! server. And TLS on the S3 listener.

mod common;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use common::faulty::Faulty;
use common::*;
use shoal::config::{AuthMode, Config, UserConfig};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const MIB: usize = 1 << 20;
const READER: &str = "reader";
const READER_SECRET: &str = "reader-secret-0123456789/+abcdef";
const ADMIN: &str = "admin";
const ADMIN_SECRET: &str = "admin-secret-9876543210";
/// Keys that need encoding, as the client suites use.
const KEYS: &[&str] = &[
    "plain.txt",
    "dir/a b.txt",
    "plus+key",
    "pct%25key",
    "✓ unicode/é.bin",
    "paren(1)",
];

struct Fixture {
    shoal: Shoal,
    origin: Arc<Faulty>,
    bucket: String,
    other: String,
}

fn user(key: &str, secret: &str, buckets: &[&str]) -> UserConfig {
    UserConfig {
        access_key_id: key.into(),
        secret_access_key: Some(secret.into()),
        buckets: buckets.iter().map(|b| b.to_string()).collect(),
        ..Default::default()
    }
}

async fn fixture(hint: &str) -> Fixture {
    let g = garage();
    let c = client(&g.endpoint);
    let bucket = common::bucket(&c, &format!("{hint}-a")).await;
    let other = common::bucket(&c, &format!("{hint}-b")).await;
    for (i, k) in KEYS.iter().enumerate() {
        put(&c, &bucket, k, data(1000 + i * 777, i as u64)).await;
    }
    put(&c, &bucket, "big.bin", data(3 * MIB + 5, 50)).await;
    put(&c, &other, KEYS[0], data(10, 1)).await;
    let mut cfg = config(g);
    cfg.auth.mode = AuthMode::Sigv4;
    cfg.auth.users = vec![
        user(READER, READER_SECRET, &[&bucket]),
        user(ADMIN, ADMIN_SECRET, &[]),
    ];
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    Fixture {
        shoal,
        origin,
        bucket,
        other,
    }
}

fn sdk(endpoint: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn code<E: aws_sdk_s3::error::ProvideErrorMetadata>(r: Result<impl Sized, E>) -> String {
    match r {
        Ok(_) => "no error".into(),
        Err(e) => e.code().unwrap_or("no code").to_owned(),
    }
}

/// A command without this machine's CA-bundle variables (they break plain-HTTP loopback
/// endpoints for some tools).
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
    c.env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE");
    c
}

fn curl(url: &str) -> (u16, Vec<u8>) {
    let out = tool("curl")
        .args(["-s", "-g", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(nl);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_sdk_reads_with_a_user_and_is_refused_without_one() {
    let f = fixture("authsdk").await;
    let (b, o) = (&f.bucket, &f.other);
    let s3 = sdk(&f.shoal.base, READER, READER_SECRET);
    for (i, k) in KEYS.iter().enumerate() {
        let want = data(1000 + i * 777, i as u64);
        let got = s3.get_object().bucket(b).key(*k).send().await.unwrap();
        assert_eq!(
            got.body.collect().await.unwrap().into_bytes().to_vec(),
            want,
            "{k}"
        );
        let h = s3.head_object().bucket(b).key(*k).send().await.unwrap();
        assert_eq!(h.content_length(), Some(want.len() as i64));
        let r = s3
            .get_object()
            .bucket(b)
            .key(*k)
            .range("bytes=5-99")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.body.collect().await.unwrap().into_bytes().to_vec(),
            want[5..100].to_vec()
        );
    }
    let listed = s3.list_objects_v2().bucket(b).send().await.unwrap();
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|x| x.key().map(str::to_owned))
        .collect();
    keys.sort();
    let mut want: Vec<String> = KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(["big.bin".to_string()])
        .collect();
    want.sort();
    assert_eq!(keys, want);
    let dirs = s3
        .list_objects_v2()
        .bucket(b)
        .prefix("dir/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(dirs.contents().len(), 1);
    // Refusals, with S3's codes.
    let k = KEYS[1];
    assert_eq!(
        code(
            sdk(&f.shoal.base, READER, "wrong")
                .get_object()
                .bucket(b)
                .key(k)
                .send()
                .await
        ),
        "SignatureDoesNotMatch"
    );
    assert_eq!(
        code(
            sdk(&f.shoal.base, "nobody", READER_SECRET)
                .get_object()
                .bucket(b)
                .key(k)
                .send()
                .await
        ),
        "InvalidAccessKeyId"
    );
    assert_eq!(
        code(s3.get_object().bucket(o).key(KEYS[0]).send().await),
        "AccessDenied"
    );
    assert_eq!(
        code(s3.list_objects_v2().bucket(o).send().await),
        "AccessDenied"
    );
    let names: Vec<String> = s3
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|x| x.name().map(str::to_owned))
        .collect();
    assert!(names.contains(b) && !names.contains(o), "{names:?}");
    // The other user may read both.
    let admin = sdk(&f.shoal.base, ADMIN, ADMIN_SECRET);
    assert!(admin
        .get_object()
        .bucket(o)
        .key(KEYS[0])
        .send()
        .await
        .is_ok());
    // No credentials at all: 403 AccessDenied in S3's XML, with a request id.
    let r = f.shoal.get(&format!("{b}/{}", KEYS[0])).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().contains_key("x-amz-request-id"));
    let x = r.text().await.unwrap();
    assert!(x.contains("<Code>AccessDenied</Code>"), "{x}");
    // Writes by an unsigned client are refused as unauthenticated first, as S3 does.
    let r = f
        .shoal
        .http
        .put(f.shoal.url(&format!("{b}/new")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_requests_cost_no_origin_request() {
    let f = fixture("authcost").await;
    let cold = format!("{}/{}", f.bucket, KEYS[2]);
    let r = f.shoal.get(&cold).await;
    assert_eq!(r.status(), 403);
    let s3 = sdk(&f.shoal.base, READER, "wrong secret");
    assert!(s3
        .get_object()
        .bucket(&f.bucket)
        .key(KEYS[2])
        .send()
        .await
        .is_err());
    let other = sdk(&f.shoal.base, READER, READER_SECRET);
    assert!(other
        .get_object()
        .bucket(&f.other)
        .key(KEYS[0])
        .send()
        .await
        .is_err());
    assert_eq!(
        f.origin.heads(),
        0,
        "a denied request learns nothing and costs nothing"
    );
    assert!(f.origin.gets.lock().unwrap().is_empty());
    f.shoal.stop().await;
}

/// A request signed 20 minutes ago (by the SDK's own signer) is RequestTimeTooSkewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_from_a_skewed_clock_is_refused() {
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode,
    };
    let f = fixture("authskew").await;
    let url = f.shoal.url(&format!("{}/{}", f.bucket, KEYS[0]));
    let identity =
        aws_credential_types::Credentials::new(READER, READER_SECRET, None, None, "t").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    let then = SystemTime::now() - Duration::from_secs(20 * 60);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(then)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let signable = SignableRequest::new(
        "GET",
        &url,
        [("host", host.as_str())].into_iter(),
        SignableBody::Precomputed(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        ),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = f.shoal.http.get(&url);
    for (k, v) in instructions.headers() {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 403);
    let x = r.text().await.unwrap();
    assert!(x.contains("<Code>RequestTimeTooSkewed</Code>"), "{x}");
    f.shoal.stop().await;
}

/// boto3: reads with a user, is refused with the right codes, and its presigned URLs work with
/// curl — until they expire, or when they are tampered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boto3_reads_signs_and_presigns() {
    let f = fixture("authboto").await;
    let out = tool("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/boto3_auth.py"
        ))
        .env("SHOAL_ENDPOINT", &f.shoal.base)
        .env("BUCKET", &f.bucket)
        .env("OTHER_BUCKET", &f.other)
        .env("KEYS", KEYS.join("\n"))
        .env("READER_KEY", READER)
        .env("READER_SECRET", READER_SECRET)
        .output()
        .expect("python3 with boto3 (make test installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains(" passed, 0 failed"),
        "{text}"
    );
    let url = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("PRESIGNED {name} ")))
            .unwrap_or_else(|| panic!("no {name} URL in {text}"))
            .to_owned()
    };
    let (st, body) = curl(&url("valid"));
    assert_eq!(
        (st, body),
        (200, data(1000, 0)),
        "a presigned URL works with plain curl"
    );
    let (st, body) = curl(&url("expired"));
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&body).contains("Request has expired"));
    let tampered = url("valid").replace("plain.txt", "plain.txu");
    let (st, body) = curl(&tampered);
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&body).contains("SignatureDoesNotMatch"));
    let (st, _) = curl(&url("other"));
    assert_eq!(
        st, 403,
        "a presigned URL for a bucket the user may not read"
    );
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aws_cli_reads_and_presigns() {
    let f = fixture("authcli").await;
    // AWS CLI v1 presigns with Signature Version 2 unless told otherwise (v2 always uses
    // SigV4); Shoal accepts SigV4 only, as the README says.
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("config");
    std::fs::write(&conf, "[default]\ns3 =\n  signature_version = s3v4\n").unwrap();
    let aws = |key: &str, secret: &str, args: &[&str]| {
        tool("aws")
            .env("AWS_CONFIG_FILE", &conf)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .args(["--endpoint-url", &f.shoal.base])
            .args(args)
            .output()
            .expect("the AWS CLI (make test installs it)")
    };
    let b = &f.bucket;
    for (i, k) in KEYS.iter().enumerate() {
        let out = aws(
            READER,
            READER_SECRET,
            &["s3", "cp", &format!("s3://{b}/{k}"), "-"],
        );
        assert!(
            out.status.success(),
            "{k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data(1000 + i * 777, i as u64), "{k}");
    }
    let out = aws(
        READER,
        READER_SECRET,
        &["s3", "ls", &format!("s3://{b}/dir/")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a b.txt"));
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part");
    let out = aws(
        READER,
        READER_SECRET,
        &[
            "s3api",
            "get-object",
            "--bucket",
            b,
            "--key",
            "big.bin",
            "--range",
            "bytes=1048570-1048599",
            part.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&part).unwrap(),
        data(3 * MIB + 5, 50)[1048570..1048600].to_vec()
    );
    let out = aws(
        READER,
        READER_SECRET,
        &["s3api", "head-object", "--bucket", b, "--key", KEYS[3]],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ContentLength\""));
    // Refusals.
    let out = aws(
        READER,
        "wrong",
        &["s3", "cp", &format!("s3://{b}/{}", KEYS[0]), "-"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = aws(
        READER,
        READER_SECRET,
        &[
            "s3api",
            "get-object",
            "--bucket",
            &f.other,
            "--key",
            KEYS[0],
            part.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDenied"));
    // `aws s3 presign` → curl.
    let out = aws(
        READER,
        READER_SECRET,
        &[
            "s3",
            "presign",
            &format!("s3://{b}/{}", KEYS[1]),
            "--expires-in",
            "300",
        ],
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (st, body) = curl(&url);
    assert_eq!((st, body), (200, data(1777, 1)), "{url}");
    f.shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rclone_reads_with_a_user() {
    let f = fixture("authrclone").await;
    let run = |secret: &str, args: &[&str]| {
        tool("rclone")
            .env("RCLONE_CONFIG_S_TYPE", "s3")
            .env("RCLONE_CONFIG_S_PROVIDER", "Other")
            .env("RCLONE_CONFIG_S_ENDPOINT", &f.shoal.base)
            .env("RCLONE_CONFIG_S_ACCESS_KEY_ID", READER)
            .env("RCLONE_CONFIG_S_SECRET_ACCESS_KEY", secret)
            .env("RCLONE_CONFIG_S_REGION", "us-east-1")
            .env("RCLONE_CONFIG_S_FORCE_PATH_STYLE", "true")
            .env("RCLONE_CONFIG", "/dev/null")
            .args(["--retries", "1", "--low-level-retries", "1"])
            .args(args)
            .output()
            .expect("rclone (make test installs it)")
    };
    let b = &f.bucket;
    let out = run(READER_SECRET, &["cat", &format!("s:{b}/big.bin")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data(3 * MIB + 5, 50));
    let out = run(READER_SECRET, &["lsf", "-R", &format!("s:{b}")]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    for k in KEYS {
        assert!(listed.lines().any(|l| l == *k), "{k} not in {listed}");
    }
    let out = run("wrong", &["cat", &format!("s:{b}/big.bin")]);
    assert!(!out.status.success(), "a wrong secret must fail");
    f.shoal.stop().await;
}

/// A test CA and a certificate for 127.0.0.1 signed by it, as PEM (cert, key, ca).
fn test_cert(name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &ca).unwrap();
    (cert.pem(), key.serialize_pem(), ca.pem())
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_serves_https_and_closes_plain_http() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "tls").await;
    put(&c, &b, "k", data(5000, 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = test_cert("one");
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, cert).unwrap();
    std::fs::write(&kp, key).unwrap();
    let mut cfg: Config = config(g);
    cfg.server.tls.cert = Some(cp);
    cfg.server.tls.key = Some(kp);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let url = format!("https://127.0.0.1:{}/{b}/k", shoal.running.s3_addr.port());
    let https = https_client(&ca);
    let r = https.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data(5000, 3));
    // Plain HTTP to the TLS port: the handshake fails and the connection is closed, cleanly.
    let plain = shoal
        .http
        .get(format!("http://{}/{b}/k", shoal.running.s3_addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // The listener is still fine.
    assert_eq!(https.get(&url).send().await.unwrap().status(), 200);
    shoal.stop().await;
}

/// SIGHUP reads a renewed certificate: a client that trusts only the new CA fails before and
/// succeeds after, without a restart.
#[test]
fn sighup_reloads_the_certificate() {
    let g = garage();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, _ca1) = test_cert("old");
    let (c2, k2, ca2) = test_cert("new");
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, c1).unwrap();
    std::fs::write(&kp, k1).unwrap();
    let mut cfg = process_config(g);
    cfg.server.tls.cert = Some(cp.clone());
    cfg.server.tls.key = Some(kp.clone());
    let shoal = ShoalProcess::start_with_env(&common::fixture::toml(&cfg), &[("RUST_LOG", "info")]);
    let port = shoal.s3.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://127.0.0.1:{port}/");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let https = https_client(&ca2);
    let before = rt.block_on(https.get(&url).send());
    assert!(
        before.is_err(),
        "the old certificate must not be trusted by the new CA's client"
    );
    std::fs::write(&cp, c2).unwrap();
    std::fs::write(&kp, k2).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(shoal.child.id() as i32, libc::SIGHUP);
    }
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = rt.block_on(https_client(&ca2).get(&url).send()) {
            ok = r.status().as_u16() < 500;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "the renewed certificate was not picked up");
    assert!(shoal
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("TLS certificate reloaded")));
}

/// Nothing secret reaches the logs, even at debug level: the users' secrets, the cluster
/// secret (given in the environment), the origin's secret key, the trace collector's token
/// (`OTEL_EXPORTER_OTLP_HEADERS`), and the signatures of signed and presigned requests.
#[test]
fn secrets_never_reach_the_logs() {
    let g = garage();
    let port = free_port();
    let cluster_secret = "cluster-secret-not-for-logs-42";
    let user_secret = "user-secret-not-for-logs-77";
    let otlp_token = "otlp-token-not-for-logs-55";
    let collector = format!("http://127.0.0.1:{}", free_port());
    let mut cfg = process_config(g);
    cfg.cluster.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.cluster.advertise = Some(format!("127.0.0.1:{port}"));
    cfg.cluster.peers = vec![format!("127.0.0.1:{port}")];
    cfg.auth.mode = AuthMode::Sigv4;
    cfg.auth.users = vec![user("logger", user_secret, &[])];
    cfg.telemetry.otlp_endpoint = Some(collector.clone());
    // The cluster secret comes from the environment only, as the test says.
    let toml = common::fixture::toml(&cfg);
    let headers = format!("authorization=Bearer {otlp_token}");
    let mut shoal = ShoalProcess::start_with_env(
        &toml,
        &[
            ("RUST_LOG", "debug"),
            ("SHOAL_CLUSTER__SECRET", cluster_secret),
            ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (bucket, sigs) = rt.block_on(async {
        let c = client(&g.endpoint);
        let b = bucket(&c, "logs").await;
        put(&c, &b, "k", data(3000, 4)).await;
        let s3 = sdk(&shoal.s3, "logger", user_secret);
        let got = s3.get_object().bucket(&b).key("k").send().await.unwrap();
        assert_eq!(got.body.collect().await.unwrap().into_bytes().len(), 3000);
        let _ = sdk(&shoal.s3, "logger", "wrong")
            .get_object()
            .bucket(&b)
            .key("k")
            .send()
            .await;
        let presigned = s3
            .get_object()
            .bucket(&b)
            .key("k")
            .presigned(
                aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(60))
                    .unwrap(),
            )
            .await
            .unwrap();
        let url = presigned.uri().to_owned();
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
        let sig = url.split("X-Amz-Signature=").nth(1).unwrap().to_owned();
        (b, vec![sig])
    });
    // Long enough for the exporter to try the (closed) collector and log that it failed.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = shoal.child.kill();
    let _ = shoal.child.wait();
    let logs = shoal.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains(&bucket),
        "the logs were captured at debug level"
    );
    assert!(
        logs.contains("opentelemetry"),
        "the exporter's own debug lines were captured"
    );
    for secret in [user_secret, cluster_secret, SECRET_KEY, otlp_token]
        .iter()
        .map(|s| s.to_string())
        .chain(sigs)
    {
        assert!(
            !logs.contains(&secret),
            "a secret reached the logs: {secret}"
        );
    }
}

// ---- Issue 19: the signing-key cache, and SigV4 as strict as S3 ----

/// Signs `method target` for `host` as the AWS SDK does (aws-sigv4, S3's settings), at `t`;
/// `presign` makes it a presigned URL valid that many seconds. Returns the target (with the
/// presigned query) and the headers to send (`host` included).
#[allow(clippy::too_many_arguments)]
fn sign(
    key: &str,
    secret: &str,
    method: &str,
    host: &str,
    target: &str,
    extra: &[(&str, &str)],
    t: SystemTime,
    presign: Option<u64>,
) -> (String, Vec<(String, String)>) {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SignatureLocation, SigningSettings, UriPathNormalizationMode,
    };
    let identity = Credentials::new(key, secret, None, None, "t").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    if let Some(e) = presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(e));
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(t)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let uri = format!("http://{host}{target}");
    let mut req = http::Request::builder().method(method).uri(&uri);
    req = req.header("host", host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let mut req = req.body(()).unwrap();
    let hdrs: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let body = if presign.is_some() {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Precomputed(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        )
    };
    let s = SignableRequest::new(
        method,
        &uri,
        hdrs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        body,
    )
    .unwrap();
    let (instructions, _) = sign(s, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    let (parts, _) = req.into_parts();
    let target = parts.uri.path_and_query().unwrap().as_str().to_owned();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    (target, headers)
}

/// One raw GET (see [`common::raw_get`]): the status and the body as text.
async fn raw(base: &str, target: &str, headers: &[(String, String)]) -> (u16, String) {
    let (status, text) = common::raw_get(base, target, headers).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// `headers` with an SSE-C header added that the signature does not cover.
fn with_sse_c(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut h = headers.to_vec();
    h.push((
        "x-amz-server-side-encryption-customer-algorithm".into(),
        "AES256".into(),
    ));
    h
}

fn with_host(headers: &[(String, String)], host: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            if k == "host" {
                (k.clone(), host.to_owned())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// The `X-Amz-Date` day of `t`, `YYYYMMDD`.
fn day_of(t: SystemTime) -> String {
    let (target, _) = sign("k", "s", "GET", "h", "/b/k", &[], t, Some(60));
    let i = target.find("X-Amz-Date=").unwrap() + "X-Amz-Date=".len();
    target[i..i + 8].to_owned()
}

fn forged_presign(bucket: &str, day: &str, amz_date: &str, region: &str) -> String {
    format!(
        "/{bucket}/{k}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={READER}%2F{day}%2F{region}%2Fs3%2Faws4_request&X-Amz-Date={amz_date}&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}",
        k = KEYS[0],
        sig = "0".repeat(64)
    )
}

/// Issue 19, vulnerability 1: a caller with only an access key id (it is in every presigned
/// URL) sent second 60 of a day with a bogus signature; the signing key of the next day was
/// cached under the credential's day before the signature was checked, and the user's valid
/// presigned URLs of that day were refused for the life of the cache entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_date_cannot_break_a_users_presigned_urls() {
    let f = fixture("authdate").await;
    let host = f.shoal.base.trim_start_matches("http://").to_owned();
    let t = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let (valid, headers) = sign(
        READER,
        READER_SECRET,
        "GET",
        &host,
        &format!("/{}/{}", f.bucket, KEYS[0]),
        &[],
        t,
        Some(7 * 86_400),
    );
    let d = day_of(t);
    for attack in [
        forged_presign(&f.bucket, &d, &format!("{d}T235960Z"), "us-east-1"),
        forged_presign(&f.bucket, &d, &format!("{d}T235959Z"), "us-east-1"),
        forged_presign(&f.bucket, &d, "00000101T000000Z", "us-east-1"),
    ] {
        let (status, body) = raw(&f.shoal.base, &attack, &[("host".into(), host.clone())]).await;
        assert!(matches!(status, 400 | 403), "{status} {body}");
    }
    let (status, body) = raw(&f.shoal.base, &valid, &headers).await;
    assert_eq!(status, 200, "the user's own URL still works: {body}");
    // The header form of the year-0 date used to panic (a 500): S3 answers 403.
    let (target, mut h) = sign(
        READER,
        READER_SECRET,
        "GET",
        &host,
        &format!("/{}/{}", f.bucket, KEYS[0]),
        &[],
        SystemTime::now(),
        None,
    );
    for (k, v) in h.iter_mut() {
        if k == "x-amz-date" {
            *v = "00000101T000000Z".into();
        }
    }
    let (status, body) = raw(&f.shoal.base, &target, &h).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    f.shoal.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 19, vulnerability 2: each distinct region of a request without a valid signature
/// used to add a signing key to a cache counted in entries, not bytes (2,000 requests with
/// 30 KB regions took RSS from 18 to 77 MiB). Now nothing unverified is cached, regions are
/// short, and 2,000 hostile requests leave RSS within 5 MiB of where it started.
#[test]
fn hostile_requests_without_a_secret_do_not_grow_memory() {
    let g = garage();
    let mut cfg = process_config(g);
    cfg.auth.mode = AuthMode::Sigv4;
    cfg.auth.users = vec![user(READER, READER_SECRET, &[])];
    let toml = common::fixture::toml(&cfg);
    let shoal = ShoalProcess::start(&toml);
    let pid = shoal.child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = shoal.s3.trim_start_matches("http://").to_owned();
    let d = day_of(SystemTime::now());
    let send = |n: usize, long: bool| {
        let (base, host, d) = (shoal.s3.clone(), host.clone(), d.clone());
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..8usize {
                let (base, host, d) = (base.clone(), host.clone(), d.clone());
                tasks.spawn(async move {
                    for i in (w..n).step_by(8) {
                        let region = if long && i % 2 == 0 {
                            format!("r{i}-{}", "x".repeat(30_000))
                        } else {
                            format!("r{i}")
                        };
                        let target = forged_presign("b", &d, &format!("{d}T000000Z"), &region);
                        let (status, _) =
                            raw(&base, &target, &[("host".into(), host.clone())]).await;
                        assert!(matches!(status, 400 | 403), "{status}");
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        })
    };
    // Warm the allocator and the connection paths with the same shapes, then measure.
    send(200, true);
    let start = rss_kib(pid);
    send(2_000, true);
    let end = rss_kib(pid);
    assert!(
        end <= start + 5 * 1024,
        "RSS grew from {start} KiB to {end} KiB after 2,000 hostile requests"
    );
}

/// Issue 19, items 4, 5 and 8: `host` and every `x-amz-*` header must be signed, a signature
/// for one virtual host is no good for another, and the authority that picks the bucket is
/// the authority that was signed (absolute-form target over `Host`; two `Host` headers are a
/// 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_signature_pins_the_host_and_every_x_amz_header() {
    let g = garage();
    let c = client(&g.endpoint);
    let a = common::bucket(&c, "vha").await;
    let b = common::bucket(&c, "vhb").await;
    // Text, so that the raw client's text body can be compared.
    put(&c, &a, "k", vec![b'a'; 100]).await;
    put(&c, &b, "k", vec![b'b'; 200]).await;
    let mut cfg = config(g);
    cfg.server.domain = Some("localhost".into());
    cfg.auth.mode = AuthMode::Sigv4;
    cfg.auth.users = vec![user(ADMIN, ADMIN_SECRET, &[])];
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let port = shoal.base.rsplit(':').next().unwrap().to_owned();
    let (ha, hb) = (
        format!("{a}.localhost:{port}"),
        format!("{b}.localhost:{port}"),
    );
    let now = SystemTime::now();
    let (target, h) = sign(ADMIN, ADMIN_SECRET, "GET", &ha, "/k", &[], now, None);
    let (status, body) = raw(&shoal.base, &target, &h).await;
    assert_eq!((status, body), (200, "a".repeat(100)));
    // Replayed against the other bucket's virtual host.
    let (status, body) = raw(&shoal.base, &target, &with_host(&h, &hb)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // An absolute-form target names the other bucket: it wins over Host, and was not signed.
    let (status, body) = raw(&shoal.base, &format!("http://{hb}/k"), &h).await;
    assert_eq!(status, 403, "{body}");
    // Two Host headers.
    let mut two = h.clone();
    two.push(("host".into(), hb.clone()));
    let (status, body) = raw(&shoal.base, &target, &two).await;
    assert_eq!(status, 400, "{body}");
    // A signature that does not cover host, in a header and in a presigned URL.
    let (t2, h2) = sign(ADMIN, ADMIN_SECRET, "GET", &ha, "/k", &[], now, None);
    let no_host: Vec<(String, String)> = h2
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.replace("SignedHeaders=host;", "SignedHeaders="),
            )
        })
        .collect();
    let (status, body) = raw(&shoal.base, &t2, &no_host).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("<HeadersNotSigned>host</HeadersNotSigned>"),
        "{body}"
    );
    // An x-amz-* header added to a captured request (SSE-C would divert it to the origin).
    let (status, body) = raw(&shoal.base, &target, &with_sse_c(&h)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("x-amz-server-side-encryption-customer-algorithm"),
        "{body}"
    );
    let (pt, ph) = sign(ADMIN, ADMIN_SECRET, "GET", &ha, "/k", &[], now, Some(60));
    let (status, _) = raw(&shoal.base, &pt, &ph).await;
    assert_eq!(status, 200);
    let (status, body) = raw(&shoal.base, &pt, &with_sse_c(&ph)).await;
    assert_eq!(status, 403, "{body}");
    shoal.stop().await;
}

/// Issue 19, items 6, 7, 11 and 12: a `+` is verified as the space it is served as; one auth
/// mechanism per request; `x-amz-content-sha256` as S3 checks it; no session tokens; `//…`
/// is not ListBuckets; ListBuckets shows the caller as owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigv4_is_as_strict_as_s3() {
    let f = fixture("authstrict").await;
    let c = client(&garage().endpoint);
    put(&c, &f.bucket, "sec/a b+c.txt", data(10, 9)).await;
    let host = f.shoal.base.trim_start_matches("http://").to_owned();
    let now = SystemTime::now();
    let s = |target: &str, extra: &[(&str, &str)], presign: Option<u64>| {
        sign(
            ADMIN,
            ADMIN_SECRET,
            "GET",
            &host,
            target,
            extra,
            now,
            presign,
        )
    };
    // Signed for the prefix `sec/a+`, replayed as `sec/a ` (a `+` in a query is a space).
    let list = format!("/{}?list-type=2&prefix=sec%2Fa%2B", f.bucket);
    let (target, h) = s(&list, &[], None);
    let (status, body) = raw(&f.shoal.base, &target, &h).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("a b+c.txt"), "{body}");
    let replay = target.replace("sec%2Fa%2B", "sec%2Fa+");
    let (status, body) = raw(&f.shoal.base, &replay, &h).await;
    assert_eq!(status, 403, "{body}");
    // Signed for `sec/a ` as `%20`, sent as `+`: the same value, served.
    let (target, h) = s(
        &format!("/{}?list-type=2&prefix=sec%2Fa%20", f.bucket),
        &[],
        None,
    );
    let (status, body) = raw(&f.shoal.base, &target.replace("%2Fa%20", "%2Fa+"), &h).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sec/a b+c.txt"), "{body}");
    // A header signature and a query signature.
    let obj = format!("/{}/{}", f.bucket, KEYS[0]);
    let (ptarget, _) = s(&obj, &[], Some(60));
    let (_, h) = s(&obj, &[], None);
    let (status, body) = raw(&f.shoal.base, &ptarget, &h).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>InvalidArgument</Code>"), "{body}");
    // x-amz-content-sha256 that is neither a hash nor a keyword.
    let (target, h) = s(&obj, &[], None);
    let bad: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| {
            if k == "x-amz-content-sha256" {
                (k.clone(), "not-a-hash".into())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let (status, body) = raw(&f.shoal.base, &target, &bad).await;
    assert_eq!(status, 400, "{body}");
    // Session tokens, signed or not.
    let (target, h) = s(&obj, &[("x-amz-security-token", "FwoGZXIvYXdzE")], None);
    let (status, body) = raw(&f.shoal.base, &target, &h).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>InvalidToken</Code>"), "{body}");
    let (ptarget, ph) = s(&obj, &[], Some(60));
    let (status, body) = raw(
        &f.shoal.base,
        &format!("{ptarget}&X-Amz-Security-Token=FwoGZXIvYXdzE"),
        &ph,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // `//…` names no bucket: not the bucket list.
    for path in ["//etc/passwd", &format!("//{}/{}", f.bucket, KEYS[0])] {
        let (target, h) = s(path, &[], None);
        let (status, body) = raw(&f.shoal.base, &target, &h).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(!body.contains("ListAllMyBucketsResult"), "{body}");
    }
    // ListBuckets: the caller is the owner, not Shoal's origin account.
    for (key, secret) in [(ADMIN, ADMIN_SECRET), (READER, READER_SECRET)] {
        let (target, h) = sign(key, secret, "GET", &host, "/", &[], now, None);
        let (status, body) = raw(&f.shoal.base, &target, &h).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("<Owner><ID>{key}</ID>")), "{body}");
        assert!(
            !body.contains(ACCESS_KEY),
            "the origin's key id leaked: {body}"
        );
    }
    f.shoal.stop().await;
}

/// Issue 19, item 9: virtual-hosted style over HTTP/2 takes the bucket from `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn virtual_hosts_work_over_http2() {
    let g = garage();
    let c = client(&g.endpoint);
    let a = common::bucket(&c, "vh2").await;
    put(&c, &a, "k", data(300, 3)).await;
    let mut cfg = config(g);
    cfg.server.domain = Some("localhost".into());
    cfg.auth.mode = AuthMode::Sigv4;
    cfg.auth.users = vec![user(ADMIN, ADMIN_SECRET, &[])];
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let port = shoal.base.rsplit(':').next().unwrap().to_owned();
    let authority = format!("{a}.localhost:{port}");
    let (target, headers) = sign(
        ADMIN,
        ADMIN_SECRET,
        "GET",
        &authority,
        "/k",
        &[],
        SystemTime::now(),
        None,
    );
    let tcp = tokio::net::TcpStream::connect(shoal.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let mut req = http::Request::get(format!("http://{authority}{target}"));
    for (k, v) in &headers {
        if k != "host" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let (resp, _) = h2.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(got, data(300, 3));
    shoal.stop().await;
}

/// Issue 19, item 10: `origin.buckets` holds on the internal listener too: a holder of
/// `cluster.secret` cannot fill a bucket outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_fill_keeps_to_the_bucket_allowlist() {
    use shoal::cluster::internal::{encode, Secret, AUTH_HEADER};
    let g = garage();
    let c = client(&g.endpoint);
    let allowed = common::bucket(&c, "ifa").await;
    let outside = common::bucket(&c, "ifb").await;
    put(&c, &outside, "k", data(1000, 5)).await;
    let head = c
        .head_object()
        .bucket(&outside)
        .key("k")
        .send()
        .await
        .unwrap();
    let port = free_port();
    let secret = "internal-allowlist-secret-0123";
    let mut cfg = config(g);
    cfg.origin.buckets = vec![allowed.clone()];
    cfg.cluster.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.cluster.advertise = Some(format!("127.0.0.1:{port}"));
    cfg.cluster.peers = vec![format!("127.0.0.1:{port}")];
    cfg.cluster.secret = Some(secret.into());
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let key = shoal::model::ChunkKey {
        origin_id: cfg.origin.id.as_str().into(),
        bucket: outside.as_str().into(),
        key: "k".into(),
        etag: head.e_tag().unwrap().into(),
        chunk_size: MIB as u64,
        index: 0,
    };
    let req = shoal::read::chunk::ChunkRequest::whole(key, 1000);
    let pq = format!("/internal/fill?{}", encode(&req));
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{pq}"))
        .header(AUTH_HEADER, Secret::new(secret).sign(now, &pq))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        origin.gets_for("k").is_empty(),
        "the origin was never asked"
    );
    shoal.stop().await;
}
