use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Hash algorithm of container checksums and image snapshots.
///
/// The canonical spelling is upper case (`SHA256`), as written by the snapshot CLI and stored in
/// the API; the schema accepts only that spelling. [`FromStr`] is case-insensitive for CLI use.
// No doc comments on variants: schemars would turn the enum into a non-structural `oneOf`.
#[derive(
    Serialize,
    Deserialize,
    JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA1")]
    Sha1,
    #[serde(rename = "SHA224")]
    Sha224,
    #[default]
    #[serde(rename = "SHA256")]
    Sha256,
    #[serde(rename = "SHA384")]
    Sha384,
    #[serde(rename = "SHA512")]
    Sha512,
    // bash-hash, STB 34.101.77-2020, 256-bit (integrity-sum's BEE2: bee2's bashHash at level 128).
    #[serde(rename = "BEE2")]
    Bee2,
}

impl Algorithm {
    /// All algorithms, in schema order.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
        Algorithm::Bee2,
    ];

    /// Canonical (API) name, e.g. `SHA256`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha224 => "SHA224",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha384 => "SHA384",
            Algorithm::Sha512 => "SHA512",
            Algorithm::Bee2 => "BEE2",
        }
    }

    /// Lower-case name used in file names and object keys, e.g. `<tag>.sha256`.
    pub const fn extension(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Bee2 => "bee2",
        }
    }

    /// Digest length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 | Algorithm::Bee2 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Algorithm::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAlgorithm(pub String);

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown hash algorithm {:?}, expected one of ", self.0)?;
        let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for a in Algorithm::ALL {
            let json = serde_json::to_value(a).unwrap();
            assert_eq!(json, a.as_str());
            assert_eq!(serde_json::from_value::<Algorithm>(json).unwrap(), a);
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
            assert_eq!(a.extension().parse::<Algorithm>().unwrap(), a);
            assert_eq!(a.extension(), a.as_str().to_ascii_lowercase());
        }
    }

    #[test]
    fn serde_is_strict_but_from_str_is_not() {
        assert!(serde_json::from_str::<Algorithm>("\"sha256\"").is_err());
        assert_eq!("Sha256".parse::<Algorithm>().unwrap(), Algorithm::Sha256);
        let err = "sha3".parse::<Algorithm>().unwrap_err();
        assert!(err.to_string().contains("BEE2"), "{err}");
    }
}
