//! The payload's protobuf messages (package `chromeos_update_engine`, proto2), field numbers
//! as CoreOS's update_engine has them (updates.md §3.7), declared with `prost`'s derive so
//! no `.proto` compiler is needed.

/// An operation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum OpType {
    /// The data, as it is.
    Replace = 0,
    /// The data, bzip2-compressed (CoreOS's full payloads).
    ReplaceBz = 1,
    /// Copy blocks of the old partition (delta payloads; not supported).
    Move = 2,
    /// A binary diff (delta payloads; not supported).
    Bsdiff = 3,
    /// Zeros, no data (ChromeOS's later number).
    Zero = 6,
    /// The data, zstd-compressed: Ferrite's own, so a client that does not know it refuses
    /// the manifest instead of writing garbage.
    ReplaceZstd = 1001,
}

/// A run of blocks; `start_block == u64::MAX` is a hole.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Extent {
    /// The first block.
    #[prost(uint64, optional, tag = "1")]
    pub start_block: Option<u64>,
    /// How many blocks.
    #[prost(uint64, optional, tag = "2")]
    pub num_blocks: Option<u64>,
}

/// One signature of the payload.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Signature {
    /// Its version: clients verify version 2 (CoreOS's production key).
    #[prost(uint32, optional, tag = "1")]
    pub version: Option<u32>,
    /// The signature's bytes.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub data: Option<Vec<u8>>,
}

/// The signature blob.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Signatures {
    /// The signatures.
    #[prost(message, repeated, tag = "1")]
    pub signatures: Vec<Signature>,
}

/// A partition's size and SHA-256.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionInfo {
    /// Bytes.
    #[prost(uint64, optional, tag = "1")]
    pub size: Option<u64>,
    /// SHA-256 of those bytes.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub hash: Option<Vec<u8>>,
}

/// One operation on the passive partition.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct InstallOperation {
    /// Its kind.
    #[prost(enumeration = "OpType", required, tag = "1")]
    pub r#type: i32,
    /// Where its data starts, relative to the blobs.
    #[prost(uint32, optional, tag = "2")]
    pub data_offset: Option<u32>,
    /// How long its data is.
    #[prost(uint32, optional, tag = "3")]
    pub data_length: Option<u32>,
    /// Source blocks (delta operations).
    #[prost(message, repeated, tag = "4")]
    pub src_extents: Vec<Extent>,
    /// Source length (delta operations).
    #[prost(uint64, optional, tag = "5")]
    pub src_length: Option<u64>,
    /// The blocks it writes.
    #[prost(message, repeated, tag = "6")]
    pub dst_extents: Vec<Extent>,
    /// The bytes it writes.
    #[prost(uint64, optional, tag = "7")]
    pub dst_length: Option<u64>,
    /// SHA-256 of its data (required when it has data).
    #[prost(bytes = "vec", optional, tag = "8")]
    pub data_sha256_hash: Option<Vec<u8>>,
}

/// The manifest.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeltaArchiveManifest {
    /// The operations on the passive USR, in order.
    #[prost(message, repeated, tag = "1")]
    pub partition_operations: Vec<InstallOperation>,
    /// One dummy operation covering the signature blob (compatibility).
    #[prost(message, repeated, tag = "2")]
    pub noop_operations: Vec<InstallOperation>,
    /// The block size (4096).
    #[prost(uint32, optional, tag = "3")]
    pub block_size: Option<u32>,
    /// Where the signature blob starts, relative to the blobs.
    #[prost(uint64, optional, tag = "4")]
    pub signatures_offset: Option<u64>,
    /// Its length.
    #[prost(uint64, optional, tag = "5")]
    pub signatures_size: Option<u64>,
    /// The old partition (delta payloads).
    #[prost(message, optional, tag = "8")]
    pub old_partition_info: Option<PartitionInfo>,
    /// The partition the operations make.
    #[prost(message, optional, tag = "9")]
    pub new_partition_info: Option<PartitionInfo>,
}
