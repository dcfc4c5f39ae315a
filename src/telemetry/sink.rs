//! Where log lines go: stdout, written by a thread of its own.
//!
//! Every request writes an access line. Written straight to stdout, each line was a `write`
//! system call on a tokio worker while it held the process-wide stdout lock, and a stalled
//! reader of stdout (a log collector that stops reading its pipe) stalled every request
//! behind it. Here a line is appended to a bounded in-memory buffer and one thread writes
//! whatever has gathered in one call: requests never wait for the log's reader.
//!
//! When the buffer is full ([`LIMIT`]) a line is dropped, not waited for. Dropped lines are
//! counted ([`dropped`], exported as `shoal_log_lines_dropped_total`) and the writer says how
//! many it lost, in a warning line of the log's own format, once it has caught up. Lines
//! still buffered are written when the [`LogSink`] is flushed, which the process does on every
//! way out of `main` ([`super::Guard`]); a process killed with SIGKILL loses the last few.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of log lines held for the writer at most: at ~300 bytes a line, some 28,000 lines,
/// a good second of a busy replica's access log.
pub const LIMIT: usize = 8 << 20;

/// How long lines may wait for the writer. It wakes on this tick rather than for each line:
/// waking a thread per line cost more than the `write` it saved.
const TICK: Duration = Duration::from_millis(10);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started because stdout did not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The log's destination: a `MakeWriter` for `tracing_subscriber`'s fmt layer. Clones share
/// the buffer and the writer thread.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Lines are waiting.
    ready: Condvar,
    /// The writer finished a batch.
    written: Condvar,
    limit: usize,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// Lines dropped and not reported yet.
    unreported: u64,
    /// The writer found nothing for a whole tick and sleeps until a line arrives.
    parked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogSink {
    /// Starts the writer thread over `out`. `json` picks the format of the writer's own
    /// "lines dropped" warning.
    pub fn new(out: Box<dyn Write + Send>, json: bool) -> std::io::Result<Self> {
        Self::with_limit(out, json, LIMIT)
    }

    fn with_limit(out: Box<dyn Write + Send>, json: bool, limit: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            written: Condvar::new(),
            limit,
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("shoal-log".into())
            .spawn(move || write_loop(&s2, out, json))?;
        Ok(LogSink { shared })
    }

    /// Waits until every line appended so far is written, for at most `limit`.
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        self.shared.ready.notify_one();
        while !st.buf.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = match self.shared.written.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn append(&self, line: &[u8]) {
        let mut st = self.shared.lock();
        if st.buf.len() + line.len() > self.shared.limit {
            st.unreported += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = st.buf.len();
        st.buf.extend_from_slice(line);
        // An idle writer is woken by the first line; a busy one comes by every tick, and past a
        // quarter of the limit it need not wait for the tick.
        let high = self.shared.limit / 4;
        let wake = std::mem::take(&mut st.parked) || (before < high && before + line.len() >= high);
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
    }
}

fn write_loop(shared: &Shared, mut out: Box<dyn Write + Send>, json: bool) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let lost = {
            let mut st = shared.lock();
            st.writing = false;
            shared.written.notify_all();
            // Lines gather for a tick (or until a flush or a full quarter wakes the writer),
            // then go out in one write. After an empty tick the writer sleeps until a line
            // comes, so an idle process does not wake a hundred times a second.
            loop {
                st = match shared.ready.wait_timeout(st, TICK) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
                if !st.buf.is_empty() {
                    break;
                }
                st.parked = true;
                while st.parked && st.buf.is_empty() {
                    st = match shared.ready.wait(st) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                }
                st.parked = false;
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.writing = true;
            std::mem::take(&mut st.unreported)
        };
        // A closed or failing stdout loses the batch; nothing else can be done with it.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        if lost > 0 {
            let _ = out.write_all(dropped_line(lost, json).as_bytes());
        }
        batch.clear();
        // After a burst, do not keep a burst-sized buffer for ever.
        if batch.capacity() > 1 << 20 {
            batch.shrink_to(64 << 10);
        }
    }
}

fn dropped_line(n: u64, json: bool) -> String {
    let msg = format!("{n} log lines dropped: stdout did not keep up");
    if json {
        format!(
            "{{\"level\":\"WARN\",\"fields\":{{\"message\":\"{msg}\"}},\"target\":\"shoal::telemetry\"}}\n"
        )
    } else {
        format!(" WARN shoal::telemetry: {msg}\n")
    }
}

/// One event's line, handed to the buffer whole.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer formats an event into one buffer and writes it with one `write_all`,
        // so a call is a whole line.
        self.sink.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { sink: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that collects into shared memory, and can be held shut.
    #[derive(Clone, Default)]
    struct Pipe {
        got: Arc<Mutex<Vec<u8>>>,
        shut: Arc<Mutex<()>>,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.shut.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_after_a_flush() {
        let pipe = Pipe::default();
        let sink = LogSink::new(Box::new(pipe.clone()), false).unwrap();
        for i in 0..1000 {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&sink);
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        sink.flush(Duration::from_secs(10));
        let got = String::from_utf8(pipe.got.lock().unwrap().clone()).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_stalled_reader_costs_dropped_lines_not_waiting_writers() {
        let pipe = Pipe::default();
        let shut = pipe.shut.lock().unwrap();
        let sink = LogSink::with_limit(Box::new(pipe.clone()), true, 100).unwrap();
        let before = dropped();
        let started = Instant::now();
        // The first line is taken by the writer, which then blocks on the shut pipe; the
        // buffer fills with the next ten lines (100 bytes) and the rest are dropped.
        for _ in 0..50 {
            sink.append(b"012345678\n");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "appending waited for the reader"
        );
        assert!(dropped() - before >= 30, "{}", dropped() - before);
        drop(shut);
        sink.flush(Duration::from_secs(10));
        let got = String::from_utf8(pipe.got.lock().unwrap().clone()).unwrap();
        let lost = got
            .lines()
            .find(|l| l.contains("log lines dropped"))
            .expect("the writer reports what it dropped");
        let v: serde_json::Value = serde_json::from_str(lost).expect("the report is JSON");
        assert_eq!(v["level"], "WARN");
        let kept = got.lines().filter(|l| *l == "012345678").count();
        assert!((2..=20).contains(&kept), "{kept} lines kept");
    }
}
