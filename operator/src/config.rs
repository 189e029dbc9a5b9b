//! The effective rules of a FileIntegrity: the agent's shipped defaults or the user's
//! ConfigMap, validated with the scan engine's own parser before any agent sees them.

use fim_engine::config::{Config, ParseContext};
use kube_fim_crds::FileIntegrity;
use sha2::{Digest, Sha256};

/// The rules agents use when `spec.config.name` is not set (the agent's shipped default).
pub const DEFAULT_RULES: &str = fim_engine::config::DEFAULT_CONFIG;

/// Name of the operator-written ConfigMap holding the effective rules of FileIntegrity `fi`.
pub fn config_map_name(fi: &str) -> String {
    format!("fim-config-{fi}")
}

/// Digest of the rules, put on the pod template so a change rolls the agents.
pub fn config_hash(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Where the rules of a FileIntegrity come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The shipped default rules.
    Default,
    /// Key `key` of ConfigMap `namespace/name`.
    ConfigMap {
        namespace: String,
        name: String,
        key: String,
    },
}

impl ConfigSource {
    /// The source `fi` asks for; the ConfigMap namespace defaults to the FileIntegrity's.
    pub fn of(fi: &FileIntegrity) -> Self {
        let config = &fi.spec.config;
        match config.name.as_deref().filter(|n| !n.is_empty()) {
            None => ConfigSource::Default,
            Some(name) => ConfigSource::ConfigMap {
                namespace: config
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .or_else(|| fi.metadata.namespace.clone())
                    .unwrap_or_default(),
                name: name.to_owned(),
                key: if config.key.is_empty() {
                    kube_fim_crds::DEFAULT_CONFIG_KEY.to_owned()
                } else {
                    config.key.clone()
                },
            },
        }
    }

    /// Whether this is ConfigMap `namespace/name`.
    pub fn is_config_map(&self, namespace: &str, name: &str) -> bool {
        matches!(self, ConfigSource::ConfigMap { namespace: ns, name: n, .. } if ns == namespace && n == name)
    }
}

/// Checks `text` with the agent's parser. The error names the ConfigMap, the key and the line
/// (`ConfigMap ns/name: aide.conf:3: ...`).
pub fn validate(text: &str, source: &ConfigSource) -> Result<(), String> {
    let (label, file) = match source {
        ConfigSource::Default => ("default rules".to_owned(), "aide.conf"),
        ConfigSource::ConfigMap {
            namespace,
            name,
            key,
        } => (format!("ConfigMap {namespace}/{name}"), key.as_str()),
    };
    let ctx = ParseContext {
        root: None,
        hostname: String::new(),
    };
    Config::parse_in(text, file, &ctx, fim_engine::config::Mode::Operator)
        .map(|_| ())
        .map_err(|e| format!("invalid rules in {label}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ConfigSource {
        ConfigSource::ConfigMap {
            namespace: "kube-fim".into(),
            name: "rules".into(),
            key: "aide.conf".into(),
        }
    }

    #[test]
    fn default_rules_are_valid() {
        validate(DEFAULT_RULES, &ConfigSource::Default).unwrap();
    }

    #[test]
    fn an_error_names_the_config_map_and_the_line() {
        let text = "ALL = p+u+g+sha256\n/etc ALL\n/usr NOSUCHGROUP\n";
        let err = validate(text, &source()).unwrap_err();
        assert!(err.contains("ConfigMap kube-fim/rules"), "{err}");
        assert!(err.contains("aide.conf:3"), "{err}");
    }

    #[test]
    fn rules_never_make_the_operator_read_its_own_files() {
        let token = std::env::temp_dir().join(format!("fim-token-{}", std::process::id()));
        std::fs::write(&token, "c2VjcmV0LXRva2Vu\n").unwrap();
        let text = format!("/etc p\n@@include {}\n", token.display());
        let err = validate(&text, &source()).unwrap_err();
        assert!(
            err.contains("aide.conf:2") && err.contains("not allowed"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        std::fs::remove_file(token).unwrap();
    }

    #[test]
    fn hash_changes_with_the_text() {
        assert_ne!(config_hash("a"), config_hash("b"));
        assert!(config_hash("a").starts_with("sha256:"));
    }

    #[test]
    fn source_defaults() {
        let fi: FileIntegrity = serde_json::from_value(serde_json::json!({
            "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
            "metadata": {"name": "x", "namespace": "kube-fim"},
            "spec": {"config": {"name": "rules", "key": "aide.conf"}}
        }))
        .unwrap();
        assert_eq!(ConfigSource::of(&fi), source());
        assert!(ConfigSource::of(&fi).is_config_map("kube-fim", "rules"));
    }
}
