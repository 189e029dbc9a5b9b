//! Container image references (`registry:5000/app:1`, `nginx`, `app@sha256:…`) and the S3 object
//! keys of their snapshots.
//!
//! The grammar is the one of the distribution project's `reference` package, which Docker,
//! containerd and Kubernetes share:
//!
//! - The first `/`-separated component is a registry host only when it contains `.`, `:` or an
//!   upper-case letter, or is `localhost` (so `registry:5000/app` has host `registry:5000`, `library/nginx` has none).
//! - Without a host the registry is `docker.io`, and a one-component path gets the `library/`
//!   prefix: `nginx` means `docker.io/library/nginx`, the same image as `docker.io/library/nginx`.
//! - The tag follows the last `:` after the last `/`; without tag and digest it is `latest`.
//! - A digest follows `@` and wins over the tag (`host/app:tag@sha256:…` is that digest, whatever
//!   the tag says today).
//!
//! Snapshot objects live at `<namespace>/<registry>/<path>/<tag or digest>.<algorithm>`, built
//! from the normalised reference so that every spelling of one image gets one key.

use std::fmt;

/// Longest name (host and path) the distribution grammar accepts.
const NAME_MAX: usize = 255;
/// Longest tag the distribution grammar accepts.
const TAG_MAX: usize = 128;
/// Registry of references without a host.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag of references with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// RE2 pattern of a whole reference, for the CRD's CEL rule (`self.matches(...)`): the same
/// grammar as [`ImageRef::parse`] except the name length limit, which CEL checks separately.
pub const REFERENCE_PATTERN: &str = concat!(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}))?$",
);

/// RE2 pattern of a bare digest (`spec.imageDigest`).
pub const DIGEST_PATTERN: &str = r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, with port when given (`registry:5000`); `docker.io` when absent.
    pub registry: String,
    /// Repository path below the registry (`library/nginx`, `a/b/c`).
    pub path: String,
    /// Tag as written, if any.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` or `sha512:<128 hex>`, if any.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference '{0}': {1}")]
    Invalid(String, &'static str),
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        let bad = |why| Err(ReferenceError::Invalid(reference.to_string(), why));
        if reference.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                if !is_digest(digest) {
                    return bad("the digest must be sha256:<64 lowercase hex> or sha512:<128>");
                }
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        // The tag separator is a ':' after the last '/': the one of `registry:5000/app` is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return bad("the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
        }
        if name.is_empty() {
            return bad("the name is missing");
        }
        if name.len() > NAME_MAX {
            return bad("the name is longer than 255 characters");
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if is_registry_like(first) => {
                if !is_host(first) {
                    return bad(
                        "the registry must be a host name or [IPv6], with an optional :port",
                    );
                }
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if path.is_empty() || !path.split('/').all(is_path_component) {
            return bad(
                "path components must be lowercase [a-z0-9] separated by '.', '_', '__' or dashes",
            );
        }
        let path = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(ImageRef {
            registry,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `registry/path`, e.g. `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// The tag, `latest` when the reference has none.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// What identifies the image content: the reference's digest, else `image_digest` (a digest
    /// recorded beside the reference, like `spec.imageDigest`), else the tag.
    pub fn version<'a>(&'a self, image_digest: Option<&'a str>) -> &'a str {
        self.digest
            .as_deref()
            .or(image_digest)
            .unwrap_or_else(|| self.tag_or_default())
    }

    /// Object key of this image's snapshot: `<namespace>/<registry>/<path>/<version>.<algorithm>`,
    /// e.g. `default/docker.io/library/nginx/latest.sha256`.
    pub fn object_key(
        &self,
        namespace: &str,
        algorithm: &str,
        image_digest: Option<&str>,
    ) -> String {
        format!(
            "{namespace}/{}/{}.{}",
            self.name(),
            self.version(image_digest),
            algorithm.to_ascii_lowercase()
        )
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/nginx:latest`, `host/app@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => write!(f, ":{tag}@{digest}"),
            (None, Some(digest)) => write!(f, "@{digest}"),
            (tag, None) => write!(f, ":{}", tag.as_deref().unwrap_or(DEFAULT_TAG)),
        }
    }
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
pub fn is_digest(s: &str) -> bool {
    let hex_len = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match s.split_once(':') {
        Some(("sha256", h)) => hex_len(h, 64),
        Some(("sha512", h)) => hex_len(h, 128),
        _ => false,
    }
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Distribution's rule: a first component is a host when it has `.`, `:` or an upper-case letter
/// (never valid in a path), or is `localhost`.
fn is_registry_like(first: &str) -> bool {
    first.contains(['.', ':', '['])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn is_host(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    port_ok && host.split('.').all(label_ok)
}

fn is_path_component(s: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn registry_with_port_is_not_a_tag() {
        let r = parse("registry:5000/app:1");
        assert_eq!(r.registry, "registry:5000");
        assert_eq!(r.path, "app");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(
            r.object_key("ns", "SHA256", None),
            "ns/registry:5000/app/1.sha256"
        );
        // A port and no tag: latest.
        let r = parse("registry:5000/app");
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("registry:5000", None)
        );
        assert_eq!(
            r.object_key("ns", "sha256", None),
            "ns/registry:5000/app/latest.sha256"
        );
        let r = parse("localhost/app:dev");
        assert_eq!(r.registry, "localhost");
    }

    #[test]
    fn nested_paths_keep_every_component() {
        let r = parse("ghcr.io/a/b/c:tag");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.path, "a/b/c");
        assert_eq!(
            r.object_key("prod", "md5", None),
            "prod/ghcr.io/a/b/c/tag.md5"
        );
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = parse("nginx");
        assert_eq!(r.name(), "docker.io/library/nginx");
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        // Every spelling of the same image gets the same key.
        let key = r.object_key("default", "sha256", None);
        assert_eq!(key, "default/docker.io/library/nginx/latest.sha256");
        for same in [
            "nginx:latest",
            "library/nginx",
            "docker.io/library/nginx:latest",
        ] {
            assert_eq!(
                parse(same).object_key("default", "sha256", None),
                key,
                "{same}"
            );
        }
        // A user repository on Docker Hub has no library/ prefix; a one-component name on
        // another registry neither.
        assert_eq!(parse("bitnami/redis:7").name(), "docker.io/bitnami/redis");
        assert_eq!(parse("quay.io/app").name(), "quay.io/app");
    }

    #[test]
    fn digests_win_over_tags() {
        let r = parse(&format!("app@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(
            r.object_key("ns", "sha256", None),
            format!("ns/docker.io/library/app/{D}.sha256")
        );
        let r = parse(&format!("host.example:8443/team/app:tag@{D}"));
        assert_eq!(r.registry, "host.example:8443");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.to_string(), format!("host.example:8443/team/app:tag@{D}"));
        assert_eq!(
            r.object_key("ns", "sha256", None),
            format!("ns/host.example:8443/team/app/{D}.sha256")
        );
        // A digest recorded beside a tag-only reference identifies the content too.
        let r = parse("app:1");
        assert_eq!(
            r.object_key("ns", "sha256", Some(D)),
            format!("ns/docker.io/library/app/{D}.sha256")
        );
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "App:1",
            "app:",
            "app:-x",
            "app@sha256:abc",
            &format!("app@{}", D.to_uppercase()),
            "app@md5:0123456789abcdef0123456789abcdef",
            "registry:5000/",
            "/app",
            "app//x",
            "a..b",
            "app_:1",
            "bad_host.example:port/app",
            ":tag",
            &format!("app:{}", "t".repeat(129)),
            &"a".repeat(256),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let err = ImageRef::parse("registry:5000/App")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry:5000/App"), "{err}");
        assert!(err.contains("lowercase"), "{err}");
    }

    #[test]
    fn the_cel_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(REFERENCE_PATTERN).unwrap();
        let cases = [
            "nginx",
            "nginx:1.25-alpine",
            "registry:5000/app:1",
            "ghcr.io/a/b/c:tag",
            "localhost/app",
            "[::1]:5000/app:v1",
            "a__b/c-d---e/f.g_h:TAG_1.0",
            &format!("app@{D}"),
            &format!("host/app:tag@{D}"),
            "App",
            "app:",
            "app:.x",
            "app@sha256:abc",
            "-app",
            "app-",
            "a..b",
            "a___b",
            "/app",
            "host:port/app",
            "UPPER/app",
            "UPPER",
        ];
        for case in cases {
            assert_eq!(
                re.is_match(case),
                ImageRef::parse(case).is_ok(),
                "pattern and parser disagree on {case:?}"
            );
        }
        // One corner the pattern cannot see without look-ahead: a first component with a '.'
        // that is a valid path but not a host is a host by normalisation, so only the parser
        // (the controller's content check) refuses it.
        assert!(re.is_match("bad_host.example/app"));
        assert!(ImageRef::parse("bad_host.example/app").is_err());
        let digest = regex::Regex::new(DIGEST_PATTERN).unwrap();
        assert!(digest.is_match(D));
        assert!(!digest.is_match(&D[..70]));
        assert!(is_digest(D) && !is_digest(&D[1..]));
    }
}
