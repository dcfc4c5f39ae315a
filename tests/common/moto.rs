//! moto in server mode: a second real S3 server over HTTP, for what Garage lacks (object
//! versioning, tagging, stored checksums). Started once per test process, stopped by the
//! kernel when the process ends (PR_SET_PDEATHSIG), like Garage.

use super::free_port;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            for v in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
                cmd.env_remove(v);
            }
            // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when
            // this (never-exiting) thread's process dies.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            match child {
                Ok(mut c) => {
                    tx.send(Ok(())).unwrap();
                    // Reap it if it dies early; otherwise wait forever with it.
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
            .expect("python3 -m moto.server (make test installs moto[server])");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Moto {
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto server did not come up");
}
