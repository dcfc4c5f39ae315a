//! The chunk file's format: `data ‖ crc32c of each block ‖ footer` (see the store's docs).

use super::BLOCK;
use std::fs::File;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 8] = b"SHOALCK1";
const FOOTER: u64 = 32;

/// A chunk file's footer: its data length and the CRC32C of each block.
pub(super) struct Footer {
    pub(super) data_len: u64,
    pub(super) crcs: Vec<u32>,
}

impl Footer {
    pub(super) fn encode(data_len: u64, crcs: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(crcs.len() * 4 + FOOTER as usize);
        for c in crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let table_crc = crc_fast::crc32_iscsi(&out);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        out.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
        out.extend_from_slice(&table_crc.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out
    }

    /// Reads and checks the footer and checksum table; `None` if the file is not a valid chunk.
    pub(super) fn read(f: &File) -> std::io::Result<Option<Footer>> {
        let size = f.metadata()?.len();
        if size < FOOTER {
            return Ok(None);
        }
        let mut ft = [0u8; FOOTER as usize];
        f.read_exact_at(&mut ft, size - FOOTER)?;
        if &ft[..8] != MAGIC {
            return Ok(None);
        }
        let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        let data_len = le64(&ft[8..16]);
        let block = le32(&ft[16..20]) as u64;
        let n = le32(&ft[20..24]) as u64;
        let table_crc = le32(&ft[24..28]);
        if block != BLOCK || n != data_len.div_ceil(BLOCK) || data_len + n * 4 + FOOTER != size {
            return Ok(None);
        }
        let mut table = vec![0u8; (n * 4) as usize];
        f.read_exact_at(&mut table, data_len)?;
        if crc_fast::crc32_iscsi(&table) != table_crc {
            return Ok(None);
        }
        let crcs = table.chunks_exact(4).map(le32).collect();
        Ok(Some(Footer { data_len, crcs }))
    }

    /// Size of the whole chunk file: data, checksum table and footer (the index weight).
    pub(super) fn file_size(&self) -> u64 {
        self.data_len + self.crcs.len() as u64 * 4 + FOOTER
    }
}
