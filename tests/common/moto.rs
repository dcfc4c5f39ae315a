//! moto in server mode: a second real S3 server over HTTP, for what Garage lacks (object
//! versioning, tagging, stored checksums, conditional PUTs). Started once per test process,
//! stopped by the kernel when the process ends, like Garage.

use super::{free_port, spawn_for_process, wait_listening};
use std::process::Command;
use std::sync::OnceLock;

/// The shared moto server of this test process.
pub struct Moto {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

/// Starts moto once per test process.
pub fn moto() -> &'static Moto {
    static M: OnceLock<Moto> = OnceLock::new();
    M.get_or_init(start)
}

fn start() -> Moto {
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        for v in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
            cmd.env_remove(v);
        }
        spawn_for_process(cmd).expect("python3 -m moto.server (make test installs moto[server])");
        if wait_listening(port, 30) {
            return Moto {
                endpoint: format!("http://127.0.0.1:{port}"),
            };
        }
    }
    panic!("moto server did not come up");
}
