//! The `shoal` binary: version, config errors, serving, health, graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
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
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n[origin]\nkind = \"local\"\nroot = \"{}\"\n[auth]\nmode = \"none\"\n[telemetry]\nlog_format = \"json\"\n",
            root.display()
        ),
    )
    .unwrap();
    let mut child = shoal()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut s3, mut ops) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("shoal listening") {
            let field = |name: &str| {
                let start = line.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
                line[start..].split('"').next().unwrap().to_owned()
            };
            s3 = field("s3_addr");
            ops = field("ops_addr");
            break;
        }
    }
    assert!(!s3.is_empty(), "no listening line");
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
