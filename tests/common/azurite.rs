//! Azurite, the Azure Storage emulator (npm), on a loopback port: the Azure origin's tests
//! run against it. Started once per test process, stopped by the kernel when the process ends
//! (PR_SET_PDEATHSIG), like Garage.

use super::free_port;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// …and its well-known key.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The shared Azurite of this test process.
pub struct Azurite {
    /// The blob endpoint, `http://127.0.0.1:port/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    /// A connection string for Python's azure-storage-blob.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}",
            self.endpoint
        )
    }
}

/// Starts Azurite once per test process.
pub fn azurite() -> &'static Azurite {
    static A: OnceLock<Azurite> = OnceLock::new();
    A.get_or_init(start)
}

fn start() -> Azurite {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("azurite");
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..5 {
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("azurite-blob");
            cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(&d)
                .args([
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                    "--silent",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when
            // this (never-exiting) thread's process dies.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut c) => {
                    tx.send(Ok(())).unwrap();
                    let _ = c.wait();
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => tx.send(Err(e.to_string())).unwrap(),
            }
        });
        rx.recv()
            .unwrap()
            .expect("azurite-blob (make test installs it with npm)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Azurite {
                    endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("azurite did not come up");
}
