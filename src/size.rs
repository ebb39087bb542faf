//! Human sizes on the command line; the parser lives in the storage crate
//! so the Docker plugin's options share it.

pub use raftblock_storage::size::{human, parse_size, SizeError};
