//! The failure ConfigMap `<fi>-<node>-failed`: what the node agent stores when a scan finds
//! differences, as the file-integrity-operator stores its AIDE log.
//!
//! The AIDE-style report goes under the data key [`DATA_KEY`] (`integritylog`). A report that fits
//! is stored as is; a larger one is gzip-compressed (best compression) and base64-encoded (standard
//! alphabet, padded) and the ConfigMap carries the annotation [`COMPRESSED_ANNOTATION`] = `"true"`,
//! so `kubectl get cm ... -o jsonpath='{.data.integritylog}' | base64 -d | gunzip` prints it. When
//! even the compressed form is over the budget, the head of the report (whole lines) is stored,
//! followed by a trailer line naming the file on the node that keeps the full report, and the
//! ConfigMap carries [`TRUNCATED_ANNOTATION`] = `"true"`.
//!
//! Everything here is pure (no I/O): the agent builds the ConfigMap from a [`FailureData`].

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use fim_engine::hash::{Algorithm, digest_bytes};

/// Data key of the report in the failure ConfigMap (as in file-integrity-operator).
pub const DATA_KEY: &str = "integritylog";

/// Annotation on the failure ConfigMap: the log is gzip-compressed and base64-encoded.
/// Mirrors `kube_fim_crds::labels::COMPRESSED` (the agent does not depend on that crate); keep
/// the two in sync.
pub const COMPRESSED_ANNOTATION: &str = "fim.kubefim.io/compressed";

/// Annotation on the failure ConfigMap: only the head of the report is stored; the trailer line
/// names the file on the node that keeps the full report.
pub const TRUNCATED_ANNOTATION: &str = "fim.kubefim.io/truncated";

/// Reports up to this many bytes are stored uncompressed (1 MiB, as in file-integrity-operator).
pub const DEFAULT_MAX_PLAIN_BYTES: usize = 1024 * 1024;

/// Largest stored value (900 KiB). The API server rejects a ConfigMap whose data (keys plus
/// values) exceeds 1 MiB; this leaves room for the key and metadata.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 900 * 1024;

/// Longest Kubernetes object name (DNS subdomain, RFC 1123).
const MAX_NAME_LEN: usize = 253;
/// Suffix of every failure ConfigMap name.
const NAME_SUFFIX: &str = "-failed";
/// Hex characters of the SHA-256 of the full name appended to a shortened name.
const NAME_HASH_LEN: usize = 10;

/// Size limits for the stored report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Reports up to this many bytes are stored as is (if they also fit `max_value_bytes`);
    /// larger ones are compressed.
    pub max_plain_bytes: usize,
    /// Budget for the stored value (plain or base64), in bytes.
    pub max_value_bytes: usize,
    /// Where the full report is kept on the node; named in the trailer of a truncated report.
    pub full_report_path: String,
}

impl Limits {
    /// The default limits (1 MiB plain, 900 KiB value) with the given full-report path.
    pub fn new(full_report_path: impl Into<String>) -> Self {
        Limits {
            max_plain_bytes: DEFAULT_MAX_PLAIN_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            full_report_path: full_report_path.into(),
        }
    }
}

/// Contents of the failure ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureData {
    /// ConfigMap data: the single key [`DATA_KEY`].
    pub data: BTreeMap<String, String>,
    /// ConfigMap annotations: [`COMPRESSED_ANNOTATION`] and/or [`TRUNCATED_ANNOTATION`] (`"true"`).
    pub annotations: BTreeMap<String, String>,
    /// Whether the stored value is gzip + base64 (same as the compressed annotation).
    pub compressed: bool,
    /// Whether only the head of the report is stored (same as the truncated annotation).
    pub truncated: bool,
}

/// Errors of [`decode_failure_log`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failure log is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("failure log is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("decompressed failure log is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Builds the failure ConfigMap's data and annotations for `report`:
/// - up to `limits.max_plain_bytes` (and within `limits.max_value_bytes`): stored as is;
/// - otherwise gzip (best) + base64 with [`COMPRESSED_ANNOTATION`], if that fits the budget;
/// - otherwise the longest head of whole lines that fits (plain or compressed, whichever shows
///   more of the report; plain on a tie) plus the trailer line
///   `... report truncated: N of M bytes shown; the full report is kept on the node at <path>`,
///   with [`TRUNCATED_ANNOTATION`].
///
/// A report exactly `max_plain_bytes` long is plain only if it also fits `max_value_bytes`: with
/// the defaults (1 MiB, 900 KiB) reports over 900 KiB are compressed, since a plain 1 MiB value
/// plus its key would exceed the API server's 1 MiB ConfigMap data limit.
pub fn failure_config_map_data(report: &str, limits: &Limits) -> FailureData {
    let plain_max = limits.max_plain_bytes.min(limits.max_value_bytes);
    if report.len() <= plain_max {
        return build(report.to_owned(), false, false);
    }
    let compressed = gzip_base64(report.as_bytes());
    if compressed.len() <= limits.max_value_bytes {
        return build(compressed, true, false);
    }
    truncated(report, limits, plain_max)
}

/// The inverse of [`failure_config_map_data`]'s encoding: `data` as stored under [`DATA_KEY`],
/// `compressed` whether the ConfigMap has [`COMPRESSED_ANNOTATION`]. ASCII whitespace in
/// compressed data (line-wrapped base64) is ignored.
pub fn decode_failure_log(data: &str, compressed: bool) -> Result<String, Error> {
    if !compressed {
        return Ok(data.to_owned());
    }
    let cleaned: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let gz = STANDARD.decode(cleaned)?;
    let mut out = Vec::new();
    GzDecoder::new(gz.as_slice())
        .read_to_end(&mut out)
        .map_err(Error::Gzip)?;
    Ok(String::from_utf8(out)?)
}

/// Name of the failure ConfigMap of FileIntegrity `fi` on node `node`: `<fi>-<node>-failed`.
///
/// The result is always a valid DNS subdomain name (RFC 1123, at most 253 characters). When the
/// plain name is too long or not valid, it is lower-cased, invalid characters are replaced, it is
/// shortened, and `-<first 10 hex of sha256(plain name)>-failed` is appended, so distinct inputs
/// keep distinct names and the same inputs always give the same name.
pub fn config_map_name(fi: &str, node: &str) -> String {
    let full = format!("{fi}-{node}{NAME_SUFFIX}");
    if full.len() <= MAX_NAME_LEN && is_dns_subdomain(&full) {
        return full;
    }
    let digest = hex::encode(digest_bytes(Algorithm::Sha256, full.as_bytes()));
    let hash = &digest[..NAME_HASH_LEN];
    let mut base = sanitize(&format!("{fi}-{node}"));
    // base + "-" + hash + "-failed"
    base.truncate(MAX_NAME_LEN - 1 - NAME_HASH_LEN - NAME_SUFFIX.len());
    let base = base.trim_end_matches(['-', '.']);
    if base.is_empty() {
        format!("{hash}{NAME_SUFFIX}")
    } else {
        format!("{base}-{hash}{NAME_SUFFIX}")
    }
}

fn build(value: String, compressed: bool, truncated: bool) -> FailureData {
    let mut annotations = BTreeMap::new();
    if compressed {
        annotations.insert(COMPRESSED_ANNOTATION.to_owned(), "true".to_owned());
    }
    if truncated {
        annotations.insert(TRUNCATED_ANNOTATION.to_owned(), "true".to_owned());
    }
    FailureData {
        data: BTreeMap::from([(DATA_KEY.to_owned(), value)]),
        annotations,
        compressed,
        truncated,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::best());
    // Writing to a Vec cannot fail.
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn gzip_base64(bytes: &[u8]) -> String {
    STANDARD.encode(gzip(bytes))
}

/// Length of the padded standard base64 encoding of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// `head` (whole lines) followed by the trailer line.
fn with_trailer(head: &str, total: usize, path: &str) -> String {
    format!(
        "{head}... report truncated: {} of {total} bytes shown; the full report is kept on the node at {path}\n",
        head.len()
    )
}

fn truncated(report: &str, limits: &Limits, plain_max: usize) -> FailureData {
    let total = report.len();
    let path = limits.full_report_path.as_str();
    // Candidate heads: the first k whole lines, k = 0..=ends.len(); ends[k-1] is the byte length.
    let ends: Vec<usize> = report
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let head_len = |k: usize| if k == 0 { 0 } else { ends[k - 1] };

    // Plain: the size is known without building the string; it grows with k.
    let plain_fits = |k: usize| with_trailer_len(head_len(k), total, path) <= plain_max;
    let plain_k = largest_fitting(ends.len(), plain_fits);

    // Compressed: binary search on the line count, compressing each candidate (the compressed
    // size grows with the head in practice; every accepted candidate was actually measured).
    let compressed_fits = |k: usize| {
        let text = with_trailer(&report[..head_len(k)], total, path);
        base64_len(gzip(text.as_bytes()).len()) <= limits.max_value_bytes
    };
    let compressed_k = largest_fitting(ends.len(), compressed_fits);

    match (plain_k, compressed_k) {
        (Some(p), Some(c)) if c > p => {
            let text = with_trailer(&report[..head_len(c)], total, path);
            build(gzip_base64(text.as_bytes()), true, true)
        }
        (Some(p), _) => build(
            with_trailer(&report[..head_len(p)], total, path),
            false,
            true,
        ),
        (None, Some(c)) => {
            let text = with_trailer(&report[..head_len(c)], total, path);
            build(gzip_base64(text.as_bytes()), true, true)
        }
        // Not even the trailer fits (absurd limits or path): store the trailer alone.
        (None, None) => build(with_trailer("", total, path), false, true),
    }
}

fn with_trailer_len(head_len: usize, total: usize, path: &str) -> usize {
    with_trailer("", total, path).len() - 1 + head_len.to_string().len() + head_len
}

/// Largest `k` in `0..=max` with `fits(k)`, assuming `fits` is monotone (true then false);
/// `None` if `fits(0)` is false.
fn largest_fitting(max: usize, mut fits: impl FnMut(usize) -> bool) -> Option<usize> {
    if !fits(0) {
        return None;
    }
    // Invariant: fits(lo); hi is the smallest count known not to fit (or max + 1).
    let (mut lo, mut hi) = (0, max + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// RFC 1123 subdomain as Kubernetes validates object names: at most 253 characters, lowercase
/// alphanumerics, '-' and '.', each dot-separated label starting and ending alphanumeric.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Lower-cases `s` and rewrites it into a valid DNS subdomain (possibly empty): other
/// characters become '-', and no label starts or ends with '-' or is empty.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if c == '.' {
            while out.ends_with('-') {
                out.pop();
            }
            if !out.is_empty() && !out.ends_with('.') {
                out.push('.');
            }
        } else if !out.is_empty() && !out.ends_with(['.', '-']) {
            out.push('-');
        }
    }
    out.trim_end_matches(['-', '.']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/var/lib/kube-fim/reports/latest.log";
    const MIB: usize = 1024 * 1024;

    fn limits() -> Limits {
        Limits::new(PATH)
    }

    fn value(fd: &FailureData) -> &str {
        &fd.data[DATA_KEY]
    }

    /// Deterministic pseudo-random bytes (SplitMix64).
    fn pseudo_random(n: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// An AIDE-like report of at least `size` bytes: header, summary, many `changed:` lines and
    /// some detailed entries with hashes.
    fn aide_report(size: usize) -> String {
        let mut s = String::from(
            "AIDE 0.16 found differences between database and filesystem!!\n\
             Start timestamp: 2024-06-18 02:00:38 +0000 (AIDE 0.16)\n\n\
             Summary:\n  Total number of entries:\t29447\n  Added entries:\t\t0\n\
             \x20 Removed entries:\t\t0\n  Changed entries:\t\t40000\n\n\
             ---------------------------------------------------\n\
             Changed entries:\n\
             ---------------------------------------------------\n\n",
        );
        let dirs = [
            "python3.9/site-packages",
            "systemd/system",
            "modules/5.14.0",
            "firmware",
        ];
        let mut i = 0usize;
        while s.len() < size {
            let dir = dirs[i % dirs.len()];
            s.push_str(&format!(
                "f   ...    .C... : /usr/lib/{dir}/pkg{}/module_{i}.so\n",
                i / 50
            ));
            if i.is_multiple_of(500) {
                let h = STANDARD.encode(pseudo_random(64, i as u64));
                s.push_str(&format!(
                    "\nFile: /hostroot/usr/lib/{dir}/pkg{}/module_{i}.so\n  SHA512   : {h}\n\n",
                    i / 50
                ));
            }
            s.push_str(&format!(
                "changed: /usr/lib/{dir}/pkg{}/file_{i}.py\n",
                i / 50
            ));
            i += 1;
        }
        s
    }

    /// Incompressible-ish report: pseudo-random bytes, hex-encoded, 64 bytes (128 hex) a line.
    fn random_report(size: usize) -> String {
        let bytes = pseudo_random(size / 2, 42);
        let mut s = String::with_capacity(size + size / 64);
        for chunk in bytes.chunks(64) {
            s.push_str(&hex::encode(chunk));
            s.push('\n');
        }
        s
    }

    #[test]
    fn small_report_stays_plain() {
        let report = "AIDE found differences between database and filesystem!!\n\
                      changed: /hostroot/etc/resolv.conf\n";
        let fd = failure_config_map_data(report, &limits());
        assert_eq!(value(&fd), report);
        assert!(fd.annotations.is_empty());
        assert!(!fd.compressed && !fd.truncated);
        assert_eq!(fd.data.len(), 1);
        assert_eq!(decode_failure_log(value(&fd), false).unwrap(), report);
    }

    #[test]
    fn empty_report_stays_plain() {
        let fd = failure_config_map_data("", &limits());
        assert_eq!(value(&fd), "");
        assert!(fd.annotations.is_empty());
    }

    #[test]
    fn large_aide_report_is_compressed_and_round_trips() {
        let report = aide_report(3 * MIB);
        assert!(report.len() >= 3 * MIB);
        let fd = failure_config_map_data(&report, &limits());
        assert!(fd.compressed);
        assert!(!fd.truncated);
        assert_eq!(fd.annotations.len(), 1);
        assert_eq!(fd.annotations[COMPRESSED_ANNOTATION], "true");
        assert!(
            value(&fd).len() <= DEFAULT_MAX_VALUE_BYTES,
            "{}",
            value(&fd).len()
        );
        assert_eq!(decode_failure_log(value(&fd), true).unwrap(), report);
    }

    #[test]
    fn incompressible_report_is_truncated_with_trailer() {
        let report = random_report(3 * MIB);
        let fd = failure_config_map_data(&report, &limits());
        assert!(fd.truncated);
        assert_eq!(fd.annotations[TRUNCATED_ANNOTATION], "true");
        assert!(
            value(&fd).len() <= DEFAULT_MAX_VALUE_BYTES,
            "{}",
            value(&fd).len()
        );
        // Hex compresses about 2:1, so the compressed head shows more than a plain one could.
        assert!(fd.compressed);
        assert_eq!(fd.annotations[COMPRESSED_ANNOTATION], "true");

        let text = decode_failure_log(value(&fd), true).unwrap();
        let (head, trailer) = text.trim_end_matches('\n').rsplit_once('\n').unwrap();
        let head = &text[..head.len() + 1];
        assert!(
            report.starts_with(head),
            "head must be a prefix of whole lines"
        );
        assert!(head.ends_with('\n'));
        assert!(
            head.len() > DEFAULT_MAX_VALUE_BYTES,
            "compression should help: {}",
            head.len()
        );
        assert!(head.lines().all(|l| l.len() == 128));
        assert_eq!(
            trailer,
            format!(
                "... report truncated: {} of {} bytes shown; the full report is kept on the node at {PATH}",
                head.len(),
                report.len()
            )
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn truncation_is_nearly_tight() {
        // One more line would not fit: the search found the largest head.
        let report = random_report(3 * MIB);
        let fd = failure_config_map_data(&report, &limits());
        let text = decode_failure_log(value(&fd), true).unwrap();
        let shown = text.len() - text.lines().last().unwrap().len() - 1;
        let next = with_trailer(&report[..shown + 129], report.len(), PATH);
        assert!(base64_len(gzip(next.as_bytes()).len()) > DEFAULT_MAX_VALUE_BYTES);
    }

    #[test]
    fn plain_truncation_when_compression_does_not_help() {
        // Budget just above the threshold; base64 of random data is larger than the data.
        let bytes = pseudo_random(3 * MIB, 7);
        let report: String = bytes
            .chunks(48)
            .map(|c| STANDARD.encode(c) + "\n")
            .collect();
        let lim = Limits {
            max_plain_bytes: MIB,
            max_value_bytes: MIB,
            full_report_path: PATH.into(),
        };
        let fd = failure_config_map_data(&report, &lim);
        assert!(fd.truncated && !fd.compressed);
        assert_eq!(fd.annotations.len(), 1);
        let v = value(&fd);
        assert!(v.len() <= MIB);
        assert!(
            v.len() > MIB - 100,
            "whole lines up to the budget: {}",
            v.len()
        );
        let trailer_start = v.trim_end_matches('\n').rfind('\n').unwrap() + 1;
        assert!(report.starts_with(&v[..trailer_start]));
        assert!(
            v[trailer_start..].starts_with(&format!("... report truncated: {trailer_start} of "))
        );
        assert!(v.ends_with(&format!("kept on the node at {PATH}\n")));
    }

    #[test]
    fn boundary_at_the_plain_threshold() {
        // Budget above the threshold: the 1 MiB rule alone decides.
        let lim = Limits {
            max_plain_bytes: MIB,
            max_value_bytes: 2 * MIB,
            full_report_path: PATH.into(),
        };
        let exact = "a".repeat(MIB - 1) + "\n";
        assert_eq!(exact.len(), 1_048_576);
        let fd = failure_config_map_data(&exact, &lim);
        assert!(!fd.compressed && !fd.truncated);
        assert_eq!(value(&fd), exact);

        let over = exact.clone() + "b";
        let fd = failure_config_map_data(&over, &lim);
        assert!(fd.compressed && !fd.truncated);
        assert_eq!(fd.annotations[COMPRESSED_ANNOTATION], "true");
        assert_eq!(decode_failure_log(value(&fd), true).unwrap(), over);
    }

    #[test]
    fn default_limits_compress_a_plain_report_over_the_budget() {
        // 1 MiB plain plus the key would exceed the API server's 1 MiB data limit.
        let at_budget = "x".repeat(DEFAULT_MAX_VALUE_BYTES);
        let fd = failure_config_map_data(&at_budget, &limits());
        assert!(!fd.compressed);
        let one_mib = "y".repeat(MIB);
        let fd = failure_config_map_data(&one_mib, &limits());
        assert!(fd.compressed && !fd.truncated);
        assert_eq!(decode_failure_log(value(&fd), true).unwrap(), one_mib);
    }

    #[test]
    fn report_without_newlines_truncates_to_trailer_only() {
        let report = random_report(3 * MIB).replace('\n', "");
        let fd = failure_config_map_data(&report, &limits());
        assert!(fd.truncated && !fd.compressed);
        assert_eq!(
            value(&fd),
            format!(
                "... report truncated: 0 of {} bytes shown; the full report is kept on the node at {PATH}\n",
                report.len()
            )
        );
    }

    #[test]
    fn trailer_length_formula() {
        for (h, t) in [(0, 5), (9, 10), (10, 3_000_000), (123_456, 3_145_728)] {
            let head = "z".repeat(h);
            assert_eq!(
                with_trailer_len(h, t, PATH),
                with_trailer(&head, t, PATH).len()
            );
        }
    }

    #[test]
    fn decode_errors() {
        assert!(matches!(
            decode_failure_log("not base64!", true),
            Err(Error::Base64(_))
        ));
        let not_gzip = STANDARD.encode(b"plain text");
        assert!(matches!(
            decode_failure_log(&not_gzip, true),
            Err(Error::Gzip(_))
        ));
        let bad_utf8 = STANDARD.encode(gzip(&[0xff, 0xfe]));
        assert!(matches!(
            decode_failure_log(&bad_utf8, true),
            Err(Error::Utf8(_))
        ));
        // Line-wrapped base64 (as `base64` prints by default) still decodes.
        let enc = gzip_base64(b"hello\n");
        let wrapped = format!("{}\n{}\n", &enc[..10], &enc[10..]);
        assert_eq!(decode_failure_log(&wrapped, true).unwrap(), "hello\n");
    }

    #[test]
    fn name_is_plain_when_valid() {
        assert_eq!(
            config_map_name(
                "example-fileintegrity",
                "ip-10-0-139-137.us-east-2.compute.internal"
            ),
            "example-fileintegrity-ip-10-0-139-137.us-east-2.compute.internal-failed"
        );
        let name = config_map_name(&"f".repeat(100), &"n".repeat(253 - 100 - 8));
        assert_eq!(name.len(), 253);
        assert!(is_dns_subdomain(&name));
        assert!(name.ends_with("nnn-failed"));
    }

    #[test]
    fn long_name_is_shortened_with_hash() {
        let fi = "example-fileintegrity";
        let node = format!("{}.ec2.internal", "ip-10-0-1-2".repeat(25));
        let full = format!("{fi}-{node}-failed");
        assert!(full.len() > 253);
        let name = config_map_name(fi, &node);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(is_dns_subdomain(&name), "{name}");
        let hash = &hex::encode(digest_bytes(Algorithm::Sha256, full.as_bytes()))[..10];
        assert!(name.ends_with(&format!("-{hash}-failed")), "{name}");
        assert!(name.starts_with("example-fileintegrity-ip-10-0-1-2"));
        // Deterministic, and distinct inputs sharing the kept prefix get distinct names.
        assert_eq!(config_map_name(fi, &node), name);
        let other = config_map_name(fi, &format!("{node}x"));
        assert_ne!(other, name);
        assert_eq!(other.len(), name.len());
    }

    #[test]
    fn shortened_name_never_ends_in_a_separator() {
        // Put a '.' / '-' right at the cut position.
        for pad in 0..4 {
            let node = format!("{}{}", "a".repeat(220 + pad), ".-.b".repeat(20));
            let name = config_map_name("fi", &node);
            assert!(name.len() <= 253);
            assert!(is_dns_subdomain(&name), "{name}");
        }
    }

    #[test]
    fn invalid_characters_are_sanitised() {
        let name = config_map_name("My_FI", "Node..One-.x");
        assert!(is_dns_subdomain(&name), "{name}");
        assert!(name.starts_with("my-fi-node.one.x-"), "{name}");
        assert!(name.ends_with("-failed"));
        let name = config_map_name("", "");
        assert!(is_dns_subdomain(&name), "{name}");
        assert_eq!(name.len(), NAME_HASH_LEN + NAME_SUFFIX.len());
    }

    #[test]
    fn dns_subdomain_validation() {
        for ok in ["a", "a-b", "a.b-c.d0", "0", "ip-10-0-1-2.ec2.internal"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a.-b", "A", "a_b", ".a", "a."] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(!is_dns_subdomain(&"a".repeat(254)));
    }
}
