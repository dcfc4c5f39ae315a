//! Azurite, the Azure Storage emulator (npm), on a loopback port: the Azure origin's tests
//! run against it. Started once per test process, stopped by the kernel when the process ends
//! (PR_SET_PDEATHSIG), like Garage.

use super::{free_port, spawn_for_process, wait_listening};
use std::process::Command;
use std::sync::OnceLock;

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
        let mut cmd = Command::new("azurite-blob");
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(&dir)
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ]);
        spawn_for_process(cmd).expect("azurite-blob (make test installs it with npm)");
        if wait_listening(port, 30) {
            return Azurite {
                endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            };
        }
    }
    panic!("azurite did not come up");
}
