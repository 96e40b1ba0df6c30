//! Making a payload from a USR image (a filesystem image, as written into USR-A).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use ed25519_dalek::Signer;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::manifest::{
    DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo, Signature, Signatures,
};
use crate::{io_err, Error, SigningKey, BLOCK_SIZE, CHUNK, FORMAT_VERSION, MAGIC};

/// What [`generate`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The payload's size, bytes (Omaha's package `size`).
    pub size: u64,
    /// Its SHA-256 (Omaha's postinstall `sha256`, base64).
    pub sha256: [u8; 32],
    /// Its SHA-1 (Omaha's package `hash`, base64).
    pub sha1: [u8; 20],
    /// How many operations it holds.
    pub operations: usize,
    /// The new partition's size, bytes.
    pub new_size: u64,
}

/// A payload signed by `key` that writes `image` onto a partition, at `out` (written under
/// a temporary name and renamed into place).
pub fn generate(image: &Path, out: &Path, key: &SigningKey) -> Result<Generated, Error> {
    let len = std::fs::metadata(image)
        .map_err(io_err("reading", image))?
        .len();
    generate_range(image, 0, len, out, key)
}

/// [`generate`] from `len` bytes at `offset` of `image` (a USR partition inside a disk
/// image).
pub fn generate_range(
    image: &Path,
    offset: u64,
    len: u64,
    out: &Path,
    key: &SigningKey,
) -> Result<Generated, Error> {
    let mut src = File::open(image).map_err(io_err("opening", image))?;
    let end = src.metadata().map_err(io_err("reading", image))?.len();
    if len == 0
        || !len.is_multiple_of(BLOCK_SIZE)
        || offset.checked_add(len).is_none_or(|e| e > end)
    {
        return Err(Error::Target {
            path: image.to_path_buf(),
            reason: format!(
                "{len} bytes at {offset} is not a whole number of 4096-byte blocks inside the file"
            ),
        });
    }
    src.seek(SeekFrom::Start(offset))
        .map_err(io_err("reading", image))?;
    let blobs_path = out.with_extension("blobs.tmp");
    let tmp = out.with_extension("tmp");
    let result = write_payload(&mut src, image, len, &blobs_path, &tmp, key).and_then(|g| {
        std::fs::rename(&tmp, out)
            .map_err(io_err("renaming", &tmp))
            .map(|()| g)
    });
    let _ = std::fs::remove_file(&blobs_path);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The operations and their data (in a file beside the payload), and the image's hash.
fn operations(
    src: &mut File,
    image: &Path,
    new_size: u64,
    blobs_path: &Path,
) -> Result<(Vec<InstallOperation>, u64, [u8; 32]), Error> {
    let mut blobs =
        BufWriter::new(File::create(blobs_path).map_err(io_err("creating", blobs_path))?);
    let mut ops = Vec::new();
    let mut image_hash = Sha256::new();
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(1 << 20)];
    let mut offset = 0u64;
    let mut blob_len = 0u64;
    while offset < new_size {
        let n = usize::try_from((new_size - offset).min(CHUNK)).unwrap_or(buf.len());
        src.read_exact(&mut buf[..n])
            .map_err(io_err("reading", image))?;
        let chunk = &buf[..n];
        image_hash.update(chunk);
        let extent = Extent {
            start_block: Some(offset / BLOCK_SIZE),
            num_blocks: Some(n as u64 / BLOCK_SIZE),
        };
        let mut op = InstallOperation {
            dst_extents: vec![extent],
            dst_length: Some(n as u64),
            ..InstallOperation::default()
        };
        if chunk.iter().all(|b| *b == 0) {
            op.set_type(OpType::Zero);
        } else {
            let packed = zstd::bulk::compress(chunk, 3).map_err(io_err("compressing", image))?;
            let (kind, data) = if packed.len() < n {
                (OpType::ReplaceZstd, packed.as_slice())
            } else {
                (OpType::Replace, chunk)
            };
            op.set_type(kind);
            op.data_offset = Some(u32::try_from(blob_len).map_err(|_| Error::Target {
                path: image.to_path_buf(),
                reason: "the payload's data passes 4 GiB".into(),
            })?);
            op.data_length = Some(data.len() as u32);
            op.data_sha256_hash = Some(Sha256::digest(data).to_vec());
            blobs
                .write_all(data)
                .map_err(io_err("writing", blobs_path))?;
            blob_len += data.len() as u64;
        }
        ops.push(op);
        offset += n as u64;
    }
    blobs.flush().map_err(io_err("writing", blobs_path))?;
    Ok((ops, blob_len, image_hash.finalize().into()))
}

/// The signature blob for `signature` (its size does not depend on the bytes).
fn signatures(signature: [u8; 64]) -> Vec<u8> {
    Signatures {
        signatures: vec![Signature {
            version: Some(crate::SIGNATURE_VERSION),
            data: Some(signature.to_vec()),
        }],
    }
    .encode_to_vec()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha256: Sha256,
    sha1: sha1::Sha1,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        sha1::Digest::update(&mut self.sha1, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_payload(
    src: &mut File,
    image: &Path,
    new_size: u64,
    blobs_path: &Path,
    tmp: &Path,
    key: &SigningKey,
) -> Result<Generated, Error> {
    let (ops, blob_len, image_hash) = operations(src, image, new_size, blobs_path)?;
    let sig_len = signatures([0; 64]).len() as u64;
    let manifest = DeltaArchiveManifest {
        noop_operations: vec![InstallOperation {
            r#type: OpType::Replace as i32,
            data_offset: Some(u32::try_from(blob_len).unwrap_or(u32::MAX)),
            data_length: Some(sig_len as u32),
            dst_extents: vec![Extent {
                start_block: Some(u64::MAX),
                num_blocks: Some(sig_len.div_ceil(BLOCK_SIZE)),
            }],
            ..InstallOperation::default()
        }],
        partition_operations: ops,
        block_size: Some(BLOCK_SIZE as u32),
        signatures_offset: Some(blob_len),
        signatures_size: Some(sig_len),
        old_partition_info: None,
        new_partition_info: Some(PartitionInfo {
            size: Some(new_size),
            hash: Some(image_hash.to_vec()),
        }),
    };
    let operations = manifest.partition_operations.len();
    let manifest = manifest.encode_to_vec();
    let file = File::create(tmp).map_err(io_err("creating", tmp))?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        sha256: Sha256::new(),
        sha1: sha1::Digest::new(),
    };
    let write = |w: &mut Hashing<BufWriter<File>>, data: &[u8]| {
        w.write_all(data).map_err(io_err("writing", tmp))
    };
    write(&mut w, MAGIC)?;
    write(&mut w, &FORMAT_VERSION.to_be_bytes())?;
    write(&mut w, &(manifest.len() as u64).to_be_bytes())?;
    write(&mut w, &manifest)?;
    let mut blobs = File::open(blobs_path).map_err(io_err("opening", blobs_path))?;
    std::io::copy(&mut blobs, &mut w).map_err(io_err("writing", tmp))?;
    // The signature covers the SHA-256 of everything before it.
    let prefix: [u8; 32] = w.sha256.clone().finalize().into();
    let sig = key.sign(&prefix).to_bytes();
    write(&mut w, &signatures(sig))?;
    w.flush().map_err(io_err("writing", tmp))?;
    let Hashing {
        inner,
        sha256,
        sha1,
    } = w;
    let file = inner
        .into_inner()
        .map_err(|e| io_err("writing", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("writing", tmp))?;
    let size = file.metadata().map_err(io_err("reading", tmp))?.len();
    Ok(Generated {
        size,
        sha256: sha256.finalize().into(),
        sha1: sha1::Digest::finalize(sha1).into(),
        operations,
        new_size,
    })
}
