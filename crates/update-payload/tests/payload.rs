//! Payloads made, verified and applied; and every way a payload can be wrong refused by
//! `verify` with update_engine's error code, the target untouched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::Signer;
use omaha::codes::ErrorCode;
use prost::Message;
use sha2::{Digest, Sha256};
use update_payload::manifest::{
    DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo, Signature, Signatures,
};
use update_payload::{apply, generate, verify, Expected, PublicKey, SigningKey};

const TARGET_FILL: u8 = 0xaa;

/// 4 MiB + 8 KiB: noise (stored as is), zeros, text (compressed), noise, a short tail.
fn image(dir: &Path) -> PathBuf {
    let mut data = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |n: usize| {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    data.extend(noise(1 << 20));
    data.extend(vec![0u8; 1 << 20]);
    data.extend(
        b"Ferrite /usr "
            .repeat((1 << 20) / 13 + 1)
            .into_iter()
            .take(1 << 20),
    );
    data.extend(noise(1 << 20));
    data.extend(noise(8192));
    let path = dir.join("usr.img");
    std::fs::write(&path, &data).unwrap();
    path
}

struct Made {
    dir: tempfile::TempDir,
    image: PathBuf,
    payload: PathBuf,
    key: SigningKey,
    expected: Expected,
}

fn made() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path());
    let payload = dir.path().join("update.gz");
    let key = update_payload::new_signing_key().unwrap();
    let g = generate(&image, &payload, &key).unwrap();
    assert_eq!(g.size, std::fs::metadata(&payload).unwrap().len());
    let bytes = std::fs::read(&payload).unwrap();
    assert_eq!(g.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
    Made {
        expected: Expected {
            size: g.size,
            sha256: g.sha256,
        },
        dir,
        image,
        payload,
        key,
    }
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::Ed25519(key.verifying_key())
}

fn target(m: &Made, len: u64) -> PathBuf {
    let t = m.dir.path().join("usr-b.img");
    std::fs::write(&t, vec![TARGET_FILL; len as usize]).unwrap();
    t
}

fn untouched(t: &Path) {
    assert!(
        std::fs::read(t).unwrap().iter().all(|b| *b == TARGET_FILL),
        "the target was written"
    );
}

#[test]
fn a_payload_writes_the_image_onto_the_partition() {
    let m = made();
    let image = std::fs::read(&m.image).unwrap();
    let size = std::fs::metadata(&m.payload).unwrap().len();
    assert!(
        size < image.len() as u64 * 3 / 4,
        "zeros and text compressed: {size} bytes"
    );
    // The public key as a PEM file, as it is baked into /usr.
    let pem = m.dir.path().join("key.pub.pem");
    std::fs::write(
        &pem,
        m.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    let key = PublicKey::from_pem(&pem).unwrap();
    let v = verify(&m.payload, &m.expected, &key).unwrap();
    assert_eq!(v.new_size(), image.len() as u64);
    assert_eq!(v.operations(), 5);
    // A partition larger than the image: the rest is left as it was.
    let t = target(&m, image.len() as u64 + (1 << 20));
    let applied = apply(&v, &t).unwrap();
    assert_eq!(applied.written, image.len() as u64);
    let after = std::fs::read(&t).unwrap();
    assert_eq!(&after[..image.len()], image.as_slice());
    assert!(after[image.len()..].iter().all(|b| *b == TARGET_FILL));
    // The megabyte of zeros is a hole now (the filesystem punched it).
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&t).unwrap();
    assert!(
        meta.blocks() * 512 <= meta.len() - (1 << 20),
        "{} bytes allocated of {}",
        meta.blocks() * 512,
        meta.len()
    );
    // Applying again (a retry after a cut) gives the same partition.
    apply(&v, &t).unwrap();
    assert_eq!(std::fs::read(&t).unwrap(), after);
}

fn code_of(m: &Made, payload: &Path, expected: &Expected, key: &PublicKey) -> ErrorCode {
    let t = target(m, std::fs::metadata(&m.image).unwrap().len());
    let err = verify(payload, expected, key).map(|_| ()).unwrap_err();
    untouched(&t);
    eprintln!("{err}");
    err.code()
}

#[test]
fn damaged_and_foreign_payloads_are_refused_before_a_byte_is_written() {
    let m = made();
    let key = public(&m.key);
    let bytes = std::fs::read(&m.payload).unwrap();
    let bad = m.dir.path().join("bad.gz");
    let with = |data: &[u8]| {
        std::fs::write(&bad, data).unwrap();
        Expected {
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    };
    // One byte of data changed: the offered hash no longer matches ...
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    with(&flipped);
    assert_eq!(
        code_of(&m, &bad, &m.expected, &key),
        ErrorCode::PayloadHashMismatch
    );
    // ... and a server that offers the changed file's own hash still cannot sign it.
    let e = with(&flipped);
    assert_eq!(
        code_of(&m, &bad, &e, &key),
        ErrorCode::PayloadPubKeyVerificationError
    );
    // Truncated.
    with(&bytes[..bytes.len() - 100]);
    assert_eq!(
        code_of(&m, &bad, &m.expected, &key),
        ErrorCode::PayloadSizeMismatch
    );
    // Another key.
    let other = public(&update_payload::new_signing_key().unwrap());
    assert_eq!(
        code_of(&m, &m.payload, &m.expected, &other),
        ErrorCode::PayloadPubKeyVerificationError
    );
    // Not a payload at all.
    let e = with(b"<html>404 Not Found</html>\n");
    assert_eq!(
        code_of(&m, &bad, &e, &key),
        ErrorCode::InvalidMetadataMagicString
    );
    let e = with(b"Cr");
    assert_eq!(
        code_of(&m, &bad, &e, &key),
        ErrorCode::InvalidMetadataMagicString
    );
    // A manifest size beyond the file.
    let mut huge = bytes.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_be_bytes());
    let e = with(&huge);
    assert_eq!(code_of(&m, &bad, &e, &key), ErrorCode::ManifestParseError);
    // The signature blob's version is not 2.
    let sig_at = bytes.len()
        - Signatures {
            signatures: vec![Signature {
                version: Some(2),
                data: Some(vec![0; 64]),
            }],
        }
        .encoded_len();
    let mut v1 = bytes.clone();
    assert_eq!(v1[sig_at + 2], 0x08, "the version's tag");
    v1[sig_at + 3] = 1;
    let e = with(&v1);
    assert_eq!(
        code_of(&m, &bad, &e, &key),
        ErrorCode::SignedDeltaPayloadExpected
    );
}

/// A payload from parts, signed by `key`: for manifests `generate` never writes.
fn assemble(manifest: &mut DeltaArchiveManifest, blobs: &[u8], key: &SigningKey) -> Vec<u8> {
    let sig_len = Signatures {
        signatures: vec![Signature {
            version: Some(2),
            data: Some(vec![0; 64]),
        }],
    }
    .encoded_len() as u64;
    manifest.signatures_offset.get_or_insert(blobs.len() as u64);
    manifest.signatures_size.get_or_insert(sig_len);
    let raw = manifest.encode_to_vec();
    let mut out = b"CrAU".to_vec();
    out.extend(1u64.to_be_bytes());
    out.extend((raw.len() as u64).to_be_bytes());
    out.extend(raw);
    out.extend(blobs);
    let digest: [u8; 32] = Sha256::digest(&out).into();
    let sig = key.sign(&digest).to_bytes().to_vec();
    out.extend(
        Signatures {
            signatures: vec![Signature {
                version: Some(2),
                data: Some(sig),
            }],
        }
        .encode_to_vec(),
    );
    out
}

fn replace(
    kind: OpType,
    data: &[u8],
    start_block: u64,
    blocks: u64,
    offset: u32,
) -> InstallOperation {
    InstallOperation {
        r#type: kind as i32,
        data_offset: Some(offset),
        data_length: Some(data.len() as u32),
        dst_extents: vec![Extent {
            start_block: Some(start_block),
            num_blocks: Some(blocks),
        }],
        data_sha256_hash: Some(Sha256::digest(data).to_vec()),
        ..InstallOperation::default()
    }
}

/// Properly signed, yet wrong: each is refused by `verify` (the key's holder is not
/// trusted to write outside the partition either).
#[test]
fn signed_but_hostile_manifests_are_refused() {
    let m = made();
    let key = public(&m.key);
    let block = vec![7u8; 4096];
    let info = Some(PartitionInfo {
        size: Some(8192),
        hash: Some(Sha256::digest([block.clone(), block.clone()].concat()).to_vec()),
    });
    let bad = m.dir.path().join("hostile.gz");
    let cases: Vec<(&str, DeltaArchiveManifest, ErrorCode)> = vec![
        (
            "blocks past the partition's end",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, 2, 1, 0)],
                new_partition_info: info.clone(),
                ..Default::default()
            },
            ErrorCode::OperationExecutionError,
        ),
        (
            "a start block that overflows",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, u64::MAX - 1, 4, 0)],
                new_partition_info: info.clone(),
                ..Default::default()
            },
            ErrorCode::OperationExecutionError,
        ),
        (
            "data inside the signature",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, 0, 1, 10)],
                new_partition_info: info.clone(),
                ..Default::default()
            },
            ErrorCode::OperationExecutionError,
        ),
        (
            "a delta operation",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Bsdiff, &block, 0, 1, 0)],
                new_partition_info: info.clone(),
                ..Default::default()
            },
            ErrorCode::OperationExecutionError,
        ),
        (
            "an operation without a hash",
            DeltaArchiveManifest {
                partition_operations: vec![InstallOperation {
                    data_sha256_hash: None,
                    ..replace(OpType::Replace, &block, 0, 1, 0)
                }],
                new_partition_info: info.clone(),
                ..Default::default()
            },
            ErrorCode::OperationHashMismatch,
        ),
        (
            "no new partition hash",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, 0, 1, 0)],
                new_partition_info: Some(PartitionInfo {
                    size: Some(8192),
                    hash: None,
                }),
                ..Default::default()
            },
            ErrorCode::ManifestParseError,
        ),
        (
            "a block size of 512",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, 0, 1, 0)],
                new_partition_info: info.clone(),
                block_size: Some(512),
                ..Default::default()
            },
            ErrorCode::ManifestParseError,
        ),
        (
            "no signature",
            DeltaArchiveManifest {
                partition_operations: vec![replace(OpType::Replace, &block, 0, 1, 0)],
                new_partition_info: info.clone(),
                signatures_size: Some(0),
                ..Default::default()
            },
            ErrorCode::SignedDeltaPayloadExpected,
        ),
    ];
    for (what, mut manifest, want) in cases {
        let data = assemble(&mut manifest, &block, &m.key);
        std::fs::write(&bad, &data).unwrap();
        let e = Expected {
            size: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
        };
        assert_eq!(code_of(&m, &bad, &e, &key), want, "{what}");
    }
}

/// CoreOS's own operation (bzip2) and a ZERO are applied; the read-back catches a partition
/// that is not the manifest's; a partition too small is refused before it is written.
#[test]
fn coreos_operations_apply_and_the_partition_is_read_back() {
    let m = made();
    let key = public(&m.key);
    let block = vec![7u8; 4096];
    let mut bz = Vec::new();
    {
        use std::io::Write;
        let mut enc = bzip2::write::BzEncoder::new(&mut bz, bzip2::Compression::best());
        enc.write_all(&block).unwrap();
        enc.finish().unwrap();
    }
    let whole = [block.clone(), vec![0u8; 4096]].concat();
    let mut manifest = DeltaArchiveManifest {
        partition_operations: vec![
            replace(OpType::ReplaceBz, &bz, 0, 1, 0),
            InstallOperation {
                r#type: OpType::Zero as i32,
                dst_extents: vec![Extent {
                    start_block: Some(1),
                    num_blocks: Some(1),
                }],
                ..InstallOperation::default()
            },
        ],
        new_partition_info: Some(PartitionInfo {
            size: Some(8192),
            hash: Some(Sha256::digest(&whole).to_vec()),
        }),
        ..Default::default()
    };
    let data = assemble(&mut manifest.clone(), &bz, &m.key);
    let p = m.dir.path().join("bz.gz");
    std::fs::write(&p, &data).unwrap();
    let e = Expected {
        size: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
    };
    let v = verify(&p, &e, &key).unwrap();
    let t = target(&m, 8192);
    apply(&v, &t).unwrap();
    assert_eq!(std::fs::read(&t).unwrap(), whole);
    // The manifest's partition hash lies: everything is written, the read-back says so.
    manifest.new_partition_info.as_mut().unwrap().hash = Some(vec![0; 32]);
    let data = assemble(&mut manifest, &bz, &m.key);
    std::fs::write(&p, &data).unwrap();
    let e = Expected {
        size: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
    };
    let v = verify(&p, &e, &key).unwrap();
    assert_eq!(
        apply(&v, &t).unwrap_err().code(),
        ErrorCode::NewRootfsVerificationError
    );
    // A target too small for the partition: refused before writing.
    let small = m.dir.path().join("small.img");
    std::fs::write(&small, vec![TARGET_FILL; 4096]).unwrap();
    assert_eq!(
        apply(&v, &small).unwrap_err().code(),
        ErrorCode::InstallDeviceOpenError
    );
    untouched(&small);
}

/// The release key is made once and read back the same; its public half verifies what it
/// signs.
#[test]
fn the_signing_key_is_kept_and_its_public_half_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/update-payload-key.pem");
    let a = update_payload::load_or_create_key(&path).unwrap();
    let b = update_payload::load_or_create_key(&path).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = dir.path().join("pub.pem");
    std::fs::write(&pem, update_payload::public_pem(&a).unwrap()).unwrap();
    let m = made();
    let key = PublicKey::from_pem(&pem).unwrap();
    let g = generate(&m.image, &m.payload, &a).unwrap();
    let e = Expected {
        size: g.size,
        sha256: g.sha256,
    };
    verify(&m.payload, &e, &key).unwrap();
    std::fs::write(&path, "not a key").unwrap();
    assert!(update_payload::load_or_create_key(&path).is_err());
    // Eight racing to make it: one key for all, and no temporary file left.
    let race = dir.path().join("race/key.pem");
    let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    update_payload::load_or_create_key(&race)
                        .unwrap()
                        .to_bytes()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| *k == keys[0]));
    assert_eq!(
        std::fs::read_dir(dir.path().join("race")).unwrap().count(),
        1
    );
}
