//! Content hashes: the algorithms of AIDE and integrity-sum, streamed over a reader.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use digest::Digest;
use serde::{Deserialize, Serialize};

/// Every hash kube-fim can compute. The order is the order hashes are listed in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Blake3,
    /// bash-hash, STB 34.101.77 with a 256-bit digest: integrity-sum's BEE2 option, which calls
    /// bee2's `bashHash` at security level 128.
    Bee2,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
        Algorithm::Blake3,
        Algorithm::Bee2,
    ];

    /// The attribute name used in aide.conf (lowercase).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
            Algorithm::Bee2 => "bee2",
        }
    }

    /// The upper-case name integrity-sum uses in snapshot file names (`snapshot.SHA256`).
    pub fn upper_name(self) -> String {
        self.name().to_ascii_uppercase()
    }

    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 | Algorithm::Blake3 | Algorithm::Bee2 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown hash algorithm '{0}' (supported: md5, sha1, sha224, sha256, sha384, sha512, blake3, bee2)"
)]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Case-insensitive, so both aide.conf's `sha256` and integrity-sum's `SHA256` parse.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| UnknownAlgorithm(s.to_string()))
    }
}

enum AnyHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Blake3(Box<blake3::Hasher>),
    Bee2(bash_hash::BashHash256),
}

impl AnyHasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Md5 => AnyHasher::Md5(Digest::new()),
            Algorithm::Sha1 => AnyHasher::Sha1(Digest::new()),
            Algorithm::Sha224 => AnyHasher::Sha224(Digest::new()),
            Algorithm::Sha256 => AnyHasher::Sha256(Digest::new()),
            Algorithm::Sha384 => AnyHasher::Sha384(Digest::new()),
            Algorithm::Sha512 => AnyHasher::Sha512(Digest::new()),
            Algorithm::Blake3 => AnyHasher::Blake3(Box::default()),
            Algorithm::Bee2 => AnyHasher::Bee2(Digest::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            AnyHasher::Md5(h) => Digest::update(h, data),
            AnyHasher::Sha1(h) => Digest::update(h, data),
            AnyHasher::Sha224(h) => Digest::update(h, data),
            AnyHasher::Sha256(h) => Digest::update(h, data),
            AnyHasher::Sha384(h) => Digest::update(h, data),
            AnyHasher::Sha512(h) => Digest::update(h, data),
            AnyHasher::Blake3(h) => {
                h.update(data);
            }
            AnyHasher::Bee2(h) => Digest::update(h, data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            AnyHasher::Md5(h) => h.finalize().to_vec(),
            AnyHasher::Sha1(h) => h.finalize().to_vec(),
            AnyHasher::Sha224(h) => h.finalize().to_vec(),
            AnyHasher::Sha256(h) => h.finalize().to_vec(),
            AnyHasher::Sha384(h) => h.finalize().to_vec(),
            AnyHasher::Sha512(h) => h.finalize().to_vec(),
            AnyHasher::Blake3(h) => h.finalize().as_bytes().to_vec(),
            AnyHasher::Bee2(h) => h.finalize().to_vec(),
        }
    }
}

/// Several hashes computed in one pass over the data.
pub struct MultiHasher {
    hashers: Vec<(Algorithm, AnyHasher)>,
}

/// Read buffer per hashing thread: large enough to keep syscalls rare, small enough for the RSS budget.
pub const READ_BUFFER: usize = 256 * 1024;

impl MultiHasher {
    pub fn new(algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        let hashers = algorithms
            .into_iter()
            .map(|a| (a, AnyHasher::new(a)))
            .collect();
        MultiHasher { hashers }
    }

    pub fn update(&mut self, data: &[u8]) {
        for (_, h) in &mut self.hashers {
            h.update(data);
        }
    }

    pub fn finalize(self) -> Vec<(Algorithm, Vec<u8>)> {
        self.hashers
            .into_iter()
            .map(|(a, h)| (a, h.finalize()))
            .collect()
    }

    /// Streams `reader` to the end through all hashers using `buf`; returns the bytes read.
    pub fn consume(&mut self, reader: &mut impl Read, buf: &mut [u8]) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            match reader.read(buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One-shot convenience used by tests and the snapshot tool.
pub fn digest_bytes(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut h = MultiHasher::new([algorithm]);
    h.update(data);
    h.finalize().pop().map(|(_, d)| d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(a: Algorithm, data: &[u8]) -> String {
        hex::encode(digest_bytes(a, data))
    }

    // Published test vectors: RFC 1321 (MD5), FIPS 180-2 examples (SHA family), the BLAKE3
    // reference test vectors; STB 34.101.77-2020 (bash-hash) below.
    #[test]
    fn published_vectors_for_abc() {
        assert_eq!(
            hex_of(Algorithm::Md5, b"abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex_of(Algorithm::Sha1, b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex_of(Algorithm::Sha224, b"abc"),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            hex_of(Algorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex_of(Algorithm::Sha384, b"abc"),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex_of(Algorithm::Sha512, b"abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn published_vectors_for_empty_input() {
        assert_eq!(
            hex_of(Algorithm::Md5, b""),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            hex_of(Algorithm::Sha256, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_of(Algorithm::Blake3, b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn blake3_reference_vector_of_length_one() {
        // test_vectors.json of the BLAKE3 reference: input is bytes 0..len mod 251.
        assert_eq!(
            hex_of(Algorithm::Blake3, &[0u8]),
            "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
        );
    }

    /// The first 128 bytes of table A.1 of STB 34.101.77-2020 (the standard's example input X).
    const STB_X: &str = concat!(
        "b194bac80a08f53b366d008e584a5de48504fa9d1bb6c7ac252e72c202fdce0d",
        "5be3d61217b96181fe6786ad716b890b5cb0c0ff33c356b835c405aed8e07f99",
        "e12bdc1ae28257ec703fccf095ee8df1c1ab76389fe678caf7c6f860d5bb9c4f",
        "f33c657b637c306add4ea7799eb23d313e98b56e27d3bccf591e181f4c5ab793",
    );

    #[test]
    fn bash_hash_vectors_from_stb_34_101_77() {
        // Table A.3, bash-hash at level 128 (256-bit output): empty input, the first 127 bytes
        // and the first 128 bytes (exactly one block, so padding adds a whole block) of X.
        let x = hex::decode(STB_X).unwrap();
        assert_eq!(x.len(), 128);
        assert_eq!(
            hex_of(Algorithm::Bee2, b""),
            "114c3dfae373d9bcbc3602d6386f2d6a2059ba1bf9048dbaa5146a6cb775709d"
        );
        assert_eq!(
            hex_of(Algorithm::Bee2, &x[..127]),
            "3d7f4efa00e9ba33feed259986567dcf5c6d12d51057a968f14f06cc0f905961"
        );
        assert_eq!(
            hex_of(Algorithm::Bee2, &x),
            "d7f428311254b8b2d00f7f9eefbd8f3025fa87c4babd1bddbe87e35b7ac80dd6"
        );
    }

    #[test]
    fn bee2_is_not_belt_hash() {
        // belt-hash (STB 34.101.31, Table A.23) of the first 32 bytes of the same X: what kube-fim
        // used to compute under this name, which no integrity-sum snapshot can match.
        let x = hex::decode(STB_X).unwrap();
        assert_ne!(
            hex_of(Algorithm::Bee2, &x[..32]),
            "749e4c3653aece5e48db4761227742eb6dbe13f4a80f7beff1a9cf8d10ee7786"
        );
    }

    #[test]
    fn streaming_equals_one_shot_for_every_algorithm() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        for a in Algorithm::ALL {
            let mut h = MultiHasher::new([a]);
            let mut buf = vec![0u8; 4096];
            let n = h.consume(&mut &data[..], &mut buf).unwrap();
            assert_eq!(n, data.len() as u64);
            assert_eq!(h.finalize()[0].1, digest_bytes(a, &data), "{a}");
            assert_eq!(digest_bytes(a, &data).len(), a.output_len(), "{a}");
        }
    }

    #[test]
    fn names_parse_case_insensitively_and_reject_unknown() {
        assert_eq!("SHA256".parse::<Algorithm>().unwrap(), Algorithm::Sha256);
        assert_eq!("bee2".parse::<Algorithm>().unwrap(), Algorithm::Bee2);
        let err = "rmd160".parse::<Algorithm>().unwrap_err();
        assert!(err.to_string().contains("rmd160"));
    }
}
