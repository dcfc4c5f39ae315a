//! What the harness wrote, so that every byte read back can be checked.
//!
//! The bytes of a version are a pure function of a 64-bit seed (a counter-mode mix, so any
//! offset can be produced on its own): the harness never stores object data, yet it can check
//! a ranged answer at any offset of any version it ever wrote. Each version is registered under
//! its ETag (the MD5 Garage gives a single-part upload) *before* it is uploaded, so a reader
//! that sees the new ETag a moment after the upload can always check it.

use md5::{Digest, Md5};
use std::cell::RefCell;
use std::sync::RwLock;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes `[off, off + out.len())` of the version made from `seed`.
pub fn fill(seed: u64, off: u64, out: &mut [u8]) {
    let (mut pos, mut k) = (off, 0usize);
    while k < out.len() {
        let w = mix(seed ^ (pos / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
        let within = (pos % 8) as usize;
        let n = (8 - within).min(out.len() - k);
        out[k..k + n].copy_from_slice(&w[within..within + n]);
        k += n;
        pos += n as u64;
    }
}

/// The whole version.
pub fn bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0; len as usize];
    fill(seed, 0, &mut v);
    v
}

/// The position in `got` of the first byte that differs from the version at `off`.
pub fn mismatch(seed: u64, off: u64, got: &[u8]) -> Option<usize> {
    thread_local!(static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]));
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let mut done = 0usize;
        while done < got.len() {
            let n = (got.len() - done).min(s.len());
            fill(seed, off + done as u64, &mut s[..n]);
            if s[..n] != got[done..done + n] {
                let i = s[..n]
                    .iter()
                    .zip(&got[done..done + n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Some(done + i);
            }
            done += n;
        }
        None
    })
}

/// The ETag Garage gives a single-part upload of these bytes (hex MD5, unquoted).
pub fn etag_of(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One version the harness wrote.
#[derive(Clone, Debug)]
pub struct Version {
    /// Unquoted.
    pub etag: String,
    pub seed: u64,
    pub size: u64,
}

/// One key and every version it ever had (the newest last).
#[derive(Clone, Debug)]
pub struct Object {
    pub key: String,
    pub hot: bool,
    pub versions: Vec<Version>,
}

/// Every key and version of the run's bucket. Keys are only ever added at set-up, so a
/// complete listing must name every one of them.
pub struct Catalog {
    pub bucket: String,
    objects: RwLock<Vec<Object>>,
}

/// An ETag as a header or a listing carries it, unquoted.
pub fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

impl Catalog {
    pub fn new(bucket: String) -> Self {
        Catalog {
            bucket,
            objects: RwLock::new(Vec::new()),
        }
    }

    /// Adds a key (no version yet); returns its index.
    pub fn add_key(&self, key: &str, hot: bool) -> usize {
        let mut o = self.objects.write().unwrap();
        o.push(Object {
            key: key.to_owned(),
            hot,
            versions: Vec::new(),
        });
        o.len() - 1
    }

    pub fn register(&self, idx: usize, v: Version) {
        self.objects.write().unwrap()[idx].versions.push(v);
    }

    pub fn len(&self) -> usize {
        self.objects.read().unwrap().len()
    }

    pub fn key(&self, idx: usize) -> String {
        self.objects.read().unwrap()[idx].key.clone()
    }

    pub fn object(&self, idx: usize) -> Object {
        self.objects.read().unwrap()[idx].clone()
    }

    pub fn all(&self) -> Vec<Object> {
        self.objects.read().unwrap().clone()
    }

    pub fn hot(&self) -> Vec<usize> {
        let o = self.objects.read().unwrap();
        (0..o.len()).filter(|&i| o[i].hot).collect()
    }

    pub fn cold(&self) -> Vec<usize> {
        let o = self.objects.read().unwrap();
        (0..o.len()).filter(|&i| !o[i].hot).collect()
    }

    /// The version of key `idx` with this ETag, if the harness ever wrote it.
    pub fn version(&self, idx: usize, etag: &str) -> Option<Version> {
        let etag = unquote(etag);
        self.objects.read().unwrap()[idx]
            .versions
            .iter()
            .find(|v| v.etag == etag)
            .cloned()
    }

    /// Every size key `idx` ever had.
    pub fn sizes(&self, idx: usize) -> Vec<u64> {
        self.objects.read().unwrap()[idx]
            .versions
            .iter()
            .map(|v| v.size)
            .collect()
    }

    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.objects
            .read()
            .unwrap()
            .iter()
            .position(|o| o.key == key)
    }

    pub fn latest(&self, idx: usize) -> Option<Version> {
        self.objects.read().unwrap()[idx].versions.last().cloned()
    }
}

/// Writes a new version of key `idx` straight to the origin (never through the fault proxy),
/// registering it first.
pub async fn put_version(
    s3: &aws_sdk_s3::Client,
    cat: &Catalog,
    idx: usize,
    seed: u64,
    size: u64,
) -> Result<Version, String> {
    let data = bytes(seed, size);
    let v = Version {
        etag: etag_of(&data),
        seed,
        size,
    };
    cat.register(idx, v.clone());
    let out = s3
        .put_object()
        .bucket(&cat.bucket)
        .key(cat.key(idx))
        .body(aws_sdk_s3::primitives::ByteStream::from(data))
        .send()
        .await
        .map_err(|e| format!("put {}: {e:?}", cat.key(idx)))?;
    let got = out.e_tag().map(unquote).unwrap_or_default().to_owned();
    if got != v.etag {
        // Not a single-part MD5 after all: remember what the origin says too.
        cat.register(
            idx,
            Version {
                etag: got,
                ..v.clone()
            },
        );
    }
    Ok(v)
}

/// Percent-encodes a key for a request path (everything but unreserved characters and `/`).
pub fn encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A small, fast, seedable generator (xorshift*): the workload's choices need no quality.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(mix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}
