//! The `shoal` binary: version, config errors, serving, health, graceful shutdown.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// `shoal serve` over a local origin at `root` (its buckets are folders), JSON logs on a pipe
/// and no `RUST_LOG`: the process, its log lines after the start-up line, and its S3 and ops
/// addresses.
fn serve_local(dir: &Path, root: &Path) -> (Child, Lines<BufReader<ChildStdout>>, String, String) {
    let cfg = dir.join("c.toml");
    let mut c = common::base_config();
    c.origin.kind = shoal::config::OriginKind::Local;
    c.origin.root = Some(root.to_owned());
    c.telemetry.log_format = shoal::config::LogFormat::Json;
    std::fs::write(&cfg, common::fixture::toml(&c)).unwrap();
    let mut child = shoal()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (s3, ops) = common::listening(&mut lines);
    (child, lines, s3, ops)
}

#[test]
fn version_is_printed() {
    let out = shoal().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("shoal {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_config_exits_non_zero_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[chunk]\nsize = \"4 KiB\"\n", "chunk.size"),
        ("[fill]\nqueue_timeout = \"later\"\n", "fill.queue_timeout"),
        ("[origin]\nkind = \"ftp\"\n", "origin.kind"),
        ("[store]\nkind = \"disk\"\n", "store.path"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[origin]\nid = \"../escape\"\n", "origin.id"),
        // The default is to verify signatures: with no users, say how to add one.
        ("", "auth.users"),
        ("[auth]\nmode = \"sigv4\"\n", "[[auth.users]]"),
    ];

    for (toml, key) in cases {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, toml).unwrap();
        let out = shoal()
            .args(["serve", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{key}: {err}");
    }
    // The environment overrides the file, and is checked the same way.
    let f = dir.path().join("ok.toml");
    std::fs::write(&f, "").unwrap();
    let out = shoal()
        .args(["serve", "--config"])
        .arg(&f)
        .env("SHOAL_CHUNK__READAHEAD", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk.readahead"));
}

#[test]
fn serves_reports_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("origin");
    std::fs::create_dir_all(root.join("demo")).unwrap();
    std::fs::write(root.join("demo/hello.txt"), b"hello").unwrap();
    let (mut child, lines, s3, ops) = serve_local(dir.path(), &root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let get = |u: String| async move { reqwest::get(u).await.unwrap() };
        assert_eq!(get(format!("http://{ops}/healthz")).await.status(), 200);
        assert_eq!(
            get(format!("http://{ops}/readyz"))
                .await
                .text()
                .await
                .unwrap(),
            "ready\nstore.kind = memory\n"
        );
        let r = get(format!("http://{s3}/demo/hello.txt")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello");
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("shoal did not stop on SIGTERM")
    });
    assert!(status.success(), "{status:?}");
    // Drain the rest of the log so nothing is left behind.
    for _ in lines {}
}

/// Regression: every access line was written to stdout on the request's own worker thread, so
/// a log reader that stopped reading (a stuck collector on the other end of the pipe) stalled
/// every request once the pipe was full. Now the lines queue in a bounded buffer, the excess
/// is dropped and counted, and the writer says how many it lost once the reader is back.
#[test]
fn a_log_reader_that_stops_reading_costs_log_lines_not_requests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("origin");
    std::fs::create_dir_all(root.join("demo")).unwrap();
    // A long key makes long access lines: the 8 MiB buffer overflows within the run.
    let key = "k".repeat(200);
    std::fs::write(root.join("demo").join(&key), b"hello").unwrap();
    let (mut child, lines, s3, ops) = serve_local(dir.path(), &root);
    // A failed assertion must not leave the server running.
    struct Reap(Option<u32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                // SAFETY: plain kill(2) on our own child, not yet waited for.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
    let mut reap = Reap(Some(child.id()));
    // From here on nobody reads the log until the requests are done.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dropped = rt.block_on(async {
        use futures_util::StreamExt as _;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let url = format!("http://{s3}/demo/{key}");
        let statuses: Vec<u16> = futures_util::stream::iter(0..12_000)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    match http.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(e) => panic!("a request stalled behind the unread log: {e}"),
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(statuses.iter().all(|&s| s == 200));
        let m = http
            .get(format!("http://{ops}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("shoal_log_lines_dropped_total "))
            .expect("the dropped-lines counter is exported")
            .trim()
            .parse::<u64>()
            .unwrap()
    });
    assert!(dropped > 0, "the log overflowed, yet no line was dropped");
    // The reader is back: the writer catches up and says what it lost.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let report = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("log lines dropped") => break l,
            Ok(_) => {}
            Err(e) => panic!("the writer did not report the lines it dropped: {e}"),
        }
    };
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["level"], "WARN");
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    reap.0 = None;
    assert!(status.success());
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("\"stopped\"")),
        "the last lines are flushed at exit"
    );
}

/// The fixture's TOML is a config file `shoal serve` reads back to the same config: every
/// key it writes exists, with the same value.
#[test]
fn the_test_fixture_writes_a_config_that_reads_back_the_same() {
    let mut cfg = common::config(common::garage());
    cfg.cluster.peers = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
    cfg.cluster.secret = Some("a-cluster-secret-of-some-length".into());
    cfg.cluster.advertise = Some("127.0.0.1:1".into());
    cfg.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318".into());
    use figment::providers::Format;
    let text = common::fixture::toml(&cfg);
    let back = shoal::config::Config::from_figment(
        figment::Figment::new().merge(figment::providers::Toml::string(&text)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(format!("{back:?}"), format!("{cfg:?}"), "{text}");
}
