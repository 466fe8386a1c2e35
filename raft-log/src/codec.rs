//! The one place bincode (2.x) is used in keel: openraft's `Membership` in
//! membership records here, and the node's commands and state checkpoints
//! (through `keel-node`'s `server::codec`). Kept behind two functions so the
//! format can be swapped.

use serde::Serialize;
use serde::de::DeserializeOwned;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// How many bytes of memory bincode may claim per byte of input. It counts
/// what it builds, not what it reads: a one-byte varint decodes into an
/// 8-byte `u64` (16 for a `u128`), so honest input claims at most 16 times
/// its length.
const CLAIM_PER_INPUT_BYTE: usize = 16;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, config())
}

/// Decode `bytes` as one whole `T`.
///
/// bincode allocates a string or byte vector by its length prefix before it
/// reads the bytes, so a damaged prefix (say 2^60) would abort the process
/// on allocation instead of failing the decode (found by the `record` fuzz
/// target through a node command). Its byte limit stops that, and it is
/// tied to the input: nothing in `bytes` can honestly need more than
/// [`CLAIM_PER_INPUT_BYTE`] times its length.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, read) = decode_limited(bytes, bytes.len().saturating_mul(CLAIM_PER_INPUT_BYTE))?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// bincode's limit is a const generic, so pick the smallest of a ladder of
/// limits (each 4 times the last, from 4 KiB) that is at least `claim`.
fn decode_limited<T: DeserializeOwned>(bytes: &[u8], claim: usize) -> Result<(T, usize), bincode::error::DecodeError> {
    macro_rules! ladder {
        ($($limit:expr),*) => {
            $(
                if claim <= $limit {
                    return bincode::serde::decode_from_slice(bytes, config().with_limit::<{ $limit }>());
                }
            )*
        };
    }
    ladder!(1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28, 1 << 30, 1 << 32, 1 << 34);
    ladder!(1 << 36, 1 << 38, 1 << 40);
    bincode::serde::decode_from_slice(bytes, config())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v = (String::from("topic"), vec![1u64, u64::MAX, 3], Some(-7i64));
        let back: (String, Vec<u64>, Option<i64>) = decode(&encode(&v).expect("encodes")).expect("decodes");
        assert_eq!(back, v);
        let big = vec![7u8; 3 << 20];
        assert_eq!(decode::<Vec<u8>>(&encode(&big).expect("encodes")).expect("decodes"), big);
    }

    #[test]
    fn a_length_prefix_past_the_input_is_an_error_not_an_allocation() {
        // A string claiming 2^60 bytes, in bincode's varint: 0xFD then a u64.
        let mut b = vec![0xFD];
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(b"abc");
        assert!(decode::<String>(&b).is_err());
        assert!(decode::<Vec<u8>>(&b).is_err());
        // Just past the input but small enough to allocate: still an error.
        let mut b = vec![0xFB];
        b.extend_from_slice(&1000u16.to_le_bytes());
        b.extend_from_slice(b"abc");
        assert!(decode::<String>(&b).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut b = encode(&5u32).expect("encodes");
        b.push(0);
        assert!(decode::<u32>(&b).is_err());
    }
}
