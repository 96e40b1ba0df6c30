//! Verifying a downloaded payload whole, then applying it to the passive partition.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::Verifier;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::manifest::{DeltaArchiveManifest, InstallOperation, OpType, Signatures};
use crate::{
    io_err, Error, PublicKey, BLOCK_SIZE, HEADER_LEN, MAGIC, MAX_MANIFEST, SIGNATURE_VERSION,
};

/// What the update service said the payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Its size, bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// A payload [`verify`] accepted: its manifest, checked.
#[derive(Debug, Clone)]
pub struct Verified {
    path: PathBuf,
    manifest: DeltaArchiveManifest,
    blobs_start: u64,
    new_size: u64,
    new_hash: [u8; 32],
}

impl Verified {
    /// The size of the partition the payload makes, bytes.
    pub fn new_size(&self) -> u64 {
        self.new_size
    }

    /// How many operations it applies.
    pub fn operations(&self) -> usize {
        self.manifest.partition_operations.len()
    }
}

/// What [`apply`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written to the partition.
    pub written: u64,
}

/// The most operations a manifest may hold (a 4 GiB partition in 1 MiB operations is 4096).
const MAX_OPERATIONS: usize = 1 << 20;

fn manifest_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Manifest {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks the payload at `path` whole before anything is written: its size and SHA-256
/// against what the update service offered, the CrAU header, the manifest (it describes
/// this very file, and every operation is one Ferrite applies, with data inside the blobs
/// and a hash, writing inside the new partition), and the version-2 signature with `key`.
pub fn verify(path: &Path, expected: &Expected, key: &PublicKey) -> Result<Verified, Error> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let len = f.metadata().map_err(io_err("reading", path))?.len();
    if len != expected.size {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            expected: expected.size,
            actual: len,
        });
    }
    let mut header = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut header).map_err(|_| Error::BadMagic {
        path: path.to_path_buf(),
    })?;
    if &header[..4] != MAGIC {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let manifest_len = u64::from_be_bytes(header[12..20].try_into().unwrap_or([0xff; 8]));
    if manifest_len > MAX_MANIFEST || HEADER_LEN + manifest_len > len {
        return Err(manifest_err(
            path,
            format!("a manifest of {manifest_len} bytes"),
        ));
    }
    let mut raw = vec![0u8; manifest_len as usize];
    f.read_exact(&mut raw).map_err(io_err("reading", path))?;
    let manifest = DeltaArchiveManifest::decode(raw.as_slice())
        .map_err(|e| manifest_err(path, e.to_string()))?;
    let blobs_start = HEADER_LEN + manifest_len;
    let (sig_offset, sig_size) = match (manifest.signatures_offset, manifest.signatures_size) {
        (Some(o), Some(s)) if s > 0 => (o, s),
        _ => {
            return Err(Error::Unsigned {
                path: path.to_path_buf(),
            })
        }
    };
    let prefix_len = blobs_start
        .checked_add(sig_offset)
        .filter(|p| p.checked_add(sig_size) == Some(len))
        .ok_or_else(|| manifest_err(path, "the signature blob is not the file's end"))?;
    // One pass over the file: the whole hash, and the hash of what the signature covers.
    f.seek(SeekFrom::Start(0))
        .map_err(io_err("reading", path))?;
    let (whole, prefix) = hash_with_prefix(&mut f, path, prefix_len)?;
    if whole != expected.sha256 {
        return Err(Error::HashMismatch {
            path: path.to_path_buf(),
        });
    }
    let mut sig_blob = vec![0u8; usize::try_from(sig_size).unwrap_or(0)];
    f.read_exact_at(&mut sig_blob, prefix_len)
        .map_err(io_err("reading", path))?;
    check_signature(path, &sig_blob, &prefix, key)?;
    let (new_size, new_hash) = check_operations(path, &manifest, sig_offset)?;
    Ok(Verified {
        path: path.to_path_buf(),
        manifest,
        blobs_start,
        new_size,
        new_hash,
    })
}

fn hash_with_prefix(
    f: &mut File,
    path: &Path,
    prefix_len: u64,
) -> Result<([u8; 32], [u8; 32]), Error> {
    let mut hasher = Sha256::new();
    let mut prefix = None;
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if prefix.is_none() && at + n as u64 >= prefix_len {
            let cut = usize::try_from(prefix_len - at).unwrap_or(n);
            hasher.update(&chunk[..cut]);
            prefix = Some(hasher.clone().finalize().into());
            hasher.update(&chunk[cut..]);
        } else {
            hasher.update(chunk);
        }
        at += n as u64;
    }
    let prefix = prefix.unwrap_or_else(|| hasher.clone().finalize().into());
    Ok((hasher.finalize().into(), prefix))
}

fn check_signature(
    path: &Path,
    blob: &[u8],
    prefix: &[u8; 32],
    key: &PublicKey,
) -> Result<(), Error> {
    let sigs = Signatures::decode(blob).map_err(|_| Error::Unsigned {
        path: path.to_path_buf(),
    })?;
    let data = sigs
        .signatures
        .iter()
        .find(|s| s.version == Some(SIGNATURE_VERSION))
        .and_then(|s| s.data.as_deref())
        .ok_or_else(|| Error::Unsigned {
            path: path.to_path_buf(),
        })?;
    let bad = || Error::Signature {
        path: path.to_path_buf(),
    };
    match key {
        PublicKey::Ed25519(k) => {
            let sig = ed25519_dalek::Signature::from_slice(data).map_err(|_| bad())?;
            k.verify(prefix, &sig).map_err(|_| bad())
        }
    }
}

/// Every operation is one Ferrite applies, has hashed data inside the blobs (before the
/// signature), and writes whole blocks inside the new partition. Returns the new
/// partition's size and hash.
fn check_operations(
    path: &Path,
    m: &DeltaArchiveManifest,
    sig_offset: u64,
) -> Result<(u64, [u8; 32]), Error> {
    if m.block_size.unwrap_or(4096) as u64 != BLOCK_SIZE {
        return Err(manifest_err(path, "a block size other than 4096"));
    }
    let info = m
        .new_partition_info
        .as_ref()
        .ok_or_else(|| manifest_err(path, "no new partition info"))?;
    let new_size = info.size.unwrap_or(0);
    let new_hash: [u8; 32] = info
        .hash
        .as_deref()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| manifest_err(path, "the new partition has no SHA-256"))?;
    if new_size == 0 || new_size % BLOCK_SIZE != 0 {
        return Err(manifest_err(
            path,
            format!("a new partition of {new_size} bytes"),
        ));
    }
    if m.partition_operations.len() > MAX_OPERATIONS {
        return Err(manifest_err(path, "too many operations"));
    }
    for (index, op) in m.partition_operations.iter().enumerate() {
        let fail = |reason: String| Error::Operation {
            path: path.to_path_buf(),
            index,
            reason,
        };
        let kind = OpType::try_from(op.r#type)
            .map_err(|_| fail(format!("unknown operation type {}", op.r#type)))?;
        if !matches!(
            kind,
            OpType::Replace | OpType::ReplaceBz | OpType::ReplaceZstd | OpType::Zero
        ) {
            return Err(fail(format!(
                "{kind:?} is not applied (full payloads only)"
            )));
        }
        let mut blocks = 0u64;
        for e in &op.dst_extents {
            let (start, n) = (e.start_block.unwrap_or(0), e.num_blocks.unwrap_or(0));
            let end = start
                .checked_add(n)
                .and_then(|b| b.checked_mul(BLOCK_SIZE))
                .filter(|end| *end <= new_size)
                .ok_or_else(|| fail(format!("blocks {start}+{n} outside the new partition")))?;
            let _ = end;
            blocks += n;
        }
        if blocks == 0 || blocks > (64 << 20) / BLOCK_SIZE {
            return Err(fail(format!("{blocks} blocks")));
        }
        let (off, len) = (op.data_offset, op.data_length);
        match kind {
            OpType::Zero if off.is_none() && len.is_none() => {}
            OpType::Zero => return Err(fail("a ZERO operation with data".into())),
            _ => {
                let (off, len) = (u64::from(off.unwrap_or(0)), u64::from(len.unwrap_or(0)));
                if len == 0 || off + len > sig_offset {
                    return Err(fail(format!("data {off}+{len} outside the blobs")));
                }
                if op.data_sha256_hash.as_ref().map(Vec::len) != Some(32) {
                    return Err(Error::OperationHash {
                        path: path.to_path_buf(),
                        index,
                    });
                }
            }
        }
    }
    Ok((new_size, new_hash))
}

/// Where a payload is written: a partition's device (offset 0, its whole length), or a
/// partition inside a disk image (its byte range).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The device or image file.
    pub path: &'a Path,
    /// Where the partition starts in it, bytes.
    pub offset: u64,
    /// The partition's length, bytes (`None`: to the end of the file).
    pub len: Option<u64>,
}

impl<'a> Target<'a> {
    /// A whole device or file.
    pub fn whole(path: &'a Path) -> Self {
        Target {
            path,
            offset: 0,
            len: None,
        }
    }
}

/// Writes a [`verify`]-ed payload onto `target` (the passive partition, or a file as large),
/// each operation's data checked against its hash before it is written, then reads the
/// partition back against the manifest's hash.
pub fn apply(v: &Verified, target: &Path) -> Result<Applied, Error> {
    apply_to(v, Target::whole(target))
}

/// [`apply`] onto a partition given by its byte range.
pub fn apply_to(v: &Verified, t: Target<'_>) -> Result<Applied, Error> {
    let target = t.path;
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(|e| Error::Target {
            path: target.to_path_buf(),
            reason: format!("opening: {e}"),
        })?;
    let end = out
        .seek(SeekFrom::End(0))
        .map_err(io_err("reading", target))?;
    let room = t.len.unwrap_or(u64::MAX).min(end.saturating_sub(t.offset));
    if room < v.new_size {
        return Err(Error::Target {
            path: target.to_path_buf(),
            reason: format!("{room} bytes, the new partition needs {}", v.new_size),
        });
    }
    let payload = File::open(&v.path).map_err(io_err("opening", &v.path))?;
    let mut written = 0u64;
    // One buffer for an operation's data and one for what it writes, reused: fresh
    // megabytes per operation would cost a page fault every 4 KiB.
    let mut bufs = Buffers {
        data: Vec::new(),
        out: Vec::new(),
        zstd: zstd::bulk::Decompressor::new().map_err(|e| Error::Operation {
            path: v.path.clone(),
            index: 0,
            reason: format!("decompressing: {e}"),
        })?,
    };
    for (index, op) in v.manifest.partition_operations.iter().enumerate() {
        // Zeros are a hole punched where the target can (a sparse file stays sparse, a
        // block device discards), written where it cannot.
        if OpType::try_from(op.r#type) == Ok(OpType::Zero) && punch(&out, t.offset, op) {
            written += op
                .dst_extents
                .iter()
                .map(|e| e.num_blocks.unwrap_or(0) * BLOCK_SIZE)
                .sum::<u64>();
            continue;
        }
        let bytes = decode(v, &payload, index, op, &mut bufs)?;
        let mut at = 0usize;
        for e in &op.dst_extents {
            let n = usize::try_from(e.num_blocks.unwrap_or(0) * BLOCK_SIZE).unwrap_or(0);
            let piece = bytes.get(at..at + n).ok_or_else(|| Error::Operation {
                path: v.path.clone(),
                index,
                reason: "its data is shorter than its blocks".into(),
            })?;
            out.write_all_at(piece, t.offset + e.start_block.unwrap_or(0) * BLOCK_SIZE)
                .map_err(io_err("writing", target))?;
            at += n;
            written += n as u64;
        }
        if at != bytes.len() {
            return Err(Error::Operation {
                path: v.path.clone(),
                index,
                reason: "its data is longer than its blocks".into(),
            });
        }
    }
    out.sync_all().map_err(io_err("writing", target))?;
    // Read back what the partition now holds.
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < v.new_size {
        let n = usize::try_from((v.new_size - at).min(buf.len() as u64)).unwrap_or(buf.len());
        out.read_exact_at(&mut buf[..n], t.offset + at)
            .map_err(io_err("reading back", target))?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    if <[u8; 32]>::from(hasher.finalize()) != v.new_hash {
        return Err(Error::Readback {
            path: target.to_path_buf(),
        });
    }
    Ok(Applied { written })
}

/// Punches holes for every extent of a ZERO operation; false (nothing punched that
/// matters: the caller writes the zeros) when the target cannot.
fn punch(out: &File, base: u64, op: &InstallOperation) -> bool {
    use rustix::fs::{fallocate, FallocateFlags};
    op.dst_extents.iter().all(|e| {
        let start = base + e.start_block.unwrap_or(0) * BLOCK_SIZE;
        let len = e.num_blocks.unwrap_or(0) * BLOCK_SIZE;
        fallocate(
            out,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            start,
            len,
        )
        .is_ok()
    })
}

/// What [`decode`] reuses from one operation to the next.
struct Buffers {
    data: Vec<u8>,
    out: Vec<u8>,
    zstd: zstd::bulk::Decompressor<'static>,
}

/// The bytes operation `index` writes, its data checked against its hash first.
fn decode<'a>(
    v: &Verified,
    payload: &File,
    index: usize,
    op: &InstallOperation,
    bufs: &'a mut Buffers,
) -> Result<&'a [u8], Error> {
    let blocks: u64 = op
        .dst_extents
        .iter()
        .map(|e| e.num_blocks.unwrap_or(0))
        .sum();
    let size = usize::try_from(blocks * BLOCK_SIZE).unwrap_or(0);
    let kind = OpType::try_from(op.r#type).unwrap_or(OpType::Move);
    if kind == OpType::Zero {
        bufs.out.clear();
        bufs.out.resize(size, 0);
        return Ok(&bufs.out);
    }
    let len = op.data_length.unwrap_or(0) as usize;
    bufs.data.resize(len, 0);
    payload
        .read_exact_at(
            &mut bufs.data,
            v.blobs_start + u64::from(op.data_offset.unwrap_or(0)),
        )
        .map_err(io_err("reading", &v.path))?;
    if op.data_sha256_hash.as_deref() != Some(Sha256::digest(bufs.data.as_slice()).as_slice()) {
        return Err(Error::OperationHash {
            path: v.path.clone(),
            index,
        });
    }
    let fail = |e: std::io::Error| Error::Operation {
        path: v.path.clone(),
        index,
        reason: format!("decompressing: {e}"),
    };
    Ok(match kind {
        OpType::ReplaceZstd => {
            bufs.out.clear();
            bufs.out.reserve(size);
            bufs.zstd
                .decompress_to_buffer(&bufs.data, &mut bufs.out)
                .map_err(fail)?;
            &bufs.out
        }
        OpType::ReplaceBz => {
            bufs.out.clear();
            bzip2::read::BzDecoder::new(bufs.data.as_slice())
                .take(size as u64 + 1)
                .read_to_end(&mut bufs.out)
                .map_err(fail)?;
            &bufs.out
        }
        _ => &bufs.data,
    })
}
