//! Stores and origins side by side, in one run, on loopback:
//!
//! 1. Shoal with the memory store against Shoal with the shared S3 cachestore
//!    (`store.kind = "s3"`, a second bucket on the same Garage), for a cold and a warm 256 MiB
//!    GET.
//! 2. A cold 256 MiB GET through Shoal from Azurite (`origin.kind = "azure"`) against the same
//!    download straight from Azurite (a SAS URL).
//!
//! Rounds alternate the contenders; medians, min–max and ratios are printed and written to
//! `target/bench-stores.json`.
//!
//! `make bench` runs it (`cargo bench --bench stores`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use shoal::config::ByteSize;
use std::fmt::Write as _;
use std::process::Command;

const MIB: usize = 1 << 20;
const LARGE: usize = 256 * MIB;
const ROUNDS: usize = 3;

/// Time to first byte and total of one GET in ms, and the bytes received (curl).
fn timed_get(url: &str) -> (f64, f64, u64) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
            url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(f.len() == 4 && f[0] == "200", "GET {url}: {text}");
    (
        f[1].parse::<f64>().unwrap() * 1000.0,
        f[2].parse::<f64>().unwrap() * 1000.0,
        f[3].parse().unwrap(),
    )
}

fn median(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Shoal in front of Garage with the store `set_store` makes.
fn shoal_toml(g: &Garage, set_store: impl FnOnce(&mut shoal::config::StoreConfig)) -> String {
    let mut cfg = bench_config(g);
    set_store(&mut cfg.store);
    common::fixture::toml(&cfg)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("stores: run it with `cargo bench --bench stores` (make bench)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = garage();
    let c = client(&g.endpoint);
    let (b, sb) = rt.block_on(async {
        let b = bucket(&c, "stores").await;
        let sb = bucket(&c, "stores-cache").await;
        for i in 0..ROUNDS {
            put(&c, &b, &format!("cold{i}"), patterned(LARGE, 30 + i as u64)).await;
        }
        put(&c, &b, "warm", patterned(LARGE, 40)).await;
        (b, sb)
    });
    let mem = ShoalProcess::start(&shoal_toml(g, |s| s.capacity = ByteSize(2 << 30)));
    let s3 = ShoalProcess::start(&shoal_toml(g, |s| {
        s.kind = shoal::config::StoreKind::S3;
        s.endpoint = Some(g.endpoint.clone());
        s.bucket = Some(sb.clone());
        s.region = REGION.into();
        s.force_path_style = true;
        s.access_key_id = Some(ACCESS_KEY.into());
        s.secret_access_key = Some(SECRET_KEY.into());
    }));
    let contenders = [("memory", &mem), ("s3", &s3)];
    // Each store gets the warm object once first (its chunks are then in the store).
    for (_, p) in &contenders {
        let (_, _, n) = timed_get(&format!("{}/{b}/warm", p.s3));
        assert_eq!(n as usize, LARGE);
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut json = Vec::new();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| read | store | TTFB ms | total ms | total × memory |\n|---|---|---|---|---|"
    );
    for scenario in ["cold", "warm"] {
        let mut runs: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); contenders.len()];
        for round in 0..ROUNDS {
            for (i, (_, p)) in contenders.iter().enumerate() {
                let key = if scenario == "cold" {
                    // Each store reads each cold object once: cold for it.
                    format!("cold{round}")
                } else {
                    "warm".into()
                };
                let (ttfb, total, n) = timed_get(&format!("{}/{b}/{key}", p.s3));
                assert_eq!(n as usize, LARGE);
                runs[i].0.push(ttfb);
                runs[i].1.push(total);
            }
        }
        let base = median(&runs[0].1).0;
        for (i, (name, _)) in contenders.iter().enumerate() {
            let (t, lo, hi) = median(&runs[i].1);
            let (f, _, _) = median(&runs[i].0);
            let _ = writeln!(
                table,
                "| {scenario} 256 MiB | {name} | {f:.1} | {t:.0} [{lo:.0}–{hi:.0}] | {:.2} |",
                t / base
            );
            json.push(format!(
                "{{\"scenario\": \"{scenario}_large\", \"store\": \"{name}\", \"ttfb_ms\": {f:.2}, \"total_ms\": {t:.2}, \"min_ms\": {lo:.2}, \"max_ms\": {hi:.2}, \"ratio_to_memory\": {:.3}}}",
                t / base
            ));
        }
    }
    // ---- Azure: Shoal in front of Azurite vs a direct download ----
    let az = common::azurite::azurite();
    let dir = tempfile::tempdir().unwrap();
    let container = format!("bench-{}", std::process::id());
    let mut specs = Vec::new();
    for i in 0..ROUNDS {
        let p = dir.path().join(format!("az{i}"));
        std::fs::write(&p, patterned(LARGE, 50 + i as u64)).unwrap();
        specs.push(format!(
            "{{\"name\": \"az{i}\", \"path\": \"{}\"}}",
            p.display()
        ));
    }
    let azure_py = |args: &[&str], stdin: &str| -> String {
        use std::io::Write;
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/azure_blobs.py"
            ))
            .args(args)
            .env("AZURE_CONNECTION_STRING", az.connection_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with azure-storage-blob");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    azure_py(&["upload", &container], &format!("[{}]", specs.join(",")));
    let sas = azure_py(&["sas", &container], "");
    let mut cfg = bench_config(g);
    cfg.origin = shoal::config::OriginConfig {
        kind: shoal::config::OriginKind::Azure,
        id: "bench-azure".into(),
        endpoint: Some(az.endpoint.clone()),
        account: Some(common::azurite::ACCOUNT.into()),
        access_key: Some(common::azurite::KEY.into()),
        ..Default::default()
    };
    cfg.store.capacity = ByteSize(2 << 30);
    let azure = ShoalProcess::start(&common::fixture::toml(&cfg));
    let mut direct = (vec![], vec![]);
    let mut via = (vec![], vec![]);
    for i in 0..ROUNDS {
        let (f, t, n) = timed_get(&format!("{}/{container}/az{i}?{sas}", az.endpoint));
        assert_eq!(n as usize, LARGE);
        direct.0.push(f);
        direct.1.push(t);
        let (f, t, n) = timed_get(&format!("{}/{container}/az{i}", azure.s3));
        assert_eq!(n as usize, LARGE);
        via.0.push(f);
        via.1.push(t);
    }
    let base = median(&direct.1).0;
    let _ = writeln!(
        table,
        "\n| cold 256 MiB from Azurite | contender | TTFB ms | total ms | total × direct |\n|---|---|---|---|---|"
    );
    for (name, runs) in [
        ("azurite (direct, SAS)", &direct),
        ("shoal (azure origin)", &via),
    ] {
        let (t, lo, hi) = median(&runs.1);
        let (f, _, _) = median(&runs.0);
        let _ = writeln!(
            table,
            "| cold | {name} | {f:.1} | {t:.0} [{lo:.0}–{hi:.0}] | {:.2} |",
            t / base
        );
        json.push(format!(
            "{{\"scenario\": \"azure_cold_large\", \"contender\": \"{name}\", \"ttfb_ms\": {f:.2}, \"total_ms\": {t:.2}, \"min_ms\": {lo:.2}, \"max_ms\": {hi:.2}, \"ratio_to_direct\": {:.3}}}",
            t / base
        ));
    }
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-stores.json");
    std::fs::write(&out, format!("[\n  {}\n]\n", json.join(",\n  "))).unwrap();
    println!("wrote {}", out.display());
}
