//! The effective rules of a FileIntegrity: the agent's shipped defaults or the user's
//! ConfigMap, validated with the scan engine's own parser before any agent sees them.

use fim_engine::config::{Config, ParseContext};
use k8s_openapi::api::core::v1::ConfigMap;
use kube_fim_crds::FileIntegrity;
use sha2::{Digest, Sha256};

/// The rules agents use when `spec.config.name` is not set (the agent's shipped default).
pub const DEFAULT_RULES: &str = fim_engine::config::DEFAULT_CONFIG;

/// Name of the operator-written ConfigMap holding the effective rules of FileIntegrity `fi`.
pub fn config_map_name(fi: &str) -> String {
    format!("fim-config-{fi}")
}

/// The FileIntegrity whose rules ConfigMap is named `cm`, if `cm` is such a name: how a change
/// of that ConfigMap finds its FileIntegrity even after someone stripped its owner reference
/// and labels (the next reconcile puts them back).
pub fn file_integrity_of_config_map_name(cm: &str) -> Option<&str> {
    cm.strip_prefix("fim-config-").filter(|fi| !fi.is_empty())
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

/// Why the rules of a FileIntegrity cannot be used. Permanent until the user changes the
/// FileIntegrity or the ConfigMap: the agents keep the last good rules meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The referenced ConfigMap does not exist.
    #[error("config ConfigMap {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    /// The referenced ConfigMap has no such key.
    #[error("config ConfigMap {namespace}/{name} has no key {key}")]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// The rules do not parse; `message` names the file and line.
    #[error("invalid rules in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl ConfigError {
    /// Bounded `error` label of `file_integrity_operator_error_total` (one of
    /// [`crate::metrics_labels::ERROR_REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::NotFound { .. } => "config_not_found",
            ConfigError::KeyMissing { .. } => "config_key_missing",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }
}

/// The rules text of `source`, given the ConfigMap it names as read (`None`: not found).
pub fn rules_text(
    source: &ConfigSource,
    config_map: Option<&ConfigMap>,
) -> Result<String, ConfigError> {
    match source {
        ConfigSource::Default => Ok(DEFAULT_RULES.to_owned()),
        ConfigSource::ConfigMap {
            namespace,
            name,
            key,
        } => {
            let cm = config_map.ok_or_else(|| ConfigError::NotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
                .ok_or_else(|| ConfigError::KeyMissing {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                })
        }
    }
}

/// Checks `text` with the engine's parser. The error names the ConfigMap, the key and the line
/// (`invalid rules in ConfigMap ns/name: aide.conf:3: ...`).
pub fn validate(text: &str, source: &ConfigSource) -> Result<(), ConfigError> {
    let (origin, file) = match source {
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
        .map_err(|e| ConfigError::Invalid {
            origin,
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_config_map_name_leads_back_to_its_file_integrity() {
        assert_eq!(
            file_integrity_of_config_map_name(&config_map_name("worker-fi")),
            Some("worker-fi")
        );
        assert_eq!(file_integrity_of_config_map_name("fim-config-"), None);
        assert_eq!(file_integrity_of_config_map_name("rules"), None);
    }

    #[test]
    fn file_integrity_operators_broken_config_is_refused_naming_its_line() {
        // FIO's BadConfig scenario: its test config (the default plus a comment) and a group
        // with an unknown hash (sha513) and attribute (XXXXXX).
        let text = format!(
            "{DEFAULT_RULES}\n# Comment added to differ from default and trigger a re-init\n\
             NORMAL = p+i+n+u+g+s+m+c+acl+selinux+xattrs+sha513+md5+XXXXXX"
        );
        let line = text.lines().count();
        let source = source();
        let err = validate(&text, &source).unwrap_err().to_string();
        assert!(err.contains(&format!("aide.conf:{line}")), "{err}");
        assert!(err.contains("sha513"), "{err}");
        assert!(err.contains("kube-fim/rules"), "{err}");
        // Without that line it is valid.
        let good = text.rsplit_once('\n').unwrap().0;
        validate(good, &source).unwrap();
    }

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
        assert_eq!(err.reason(), "config_invalid");
        let err = err.to_string();
        assert!(err.contains("ConfigMap kube-fim/rules"), "{err}");
        assert!(err.contains("aide.conf:3"), "{err}");
    }

    #[test]
    fn a_missing_config_map_or_key_is_its_own_reason() {
        let err = rules_text(&source(), None).unwrap_err();
        assert_eq!(err.to_string(), "config ConfigMap kube-fim/rules not found");
        assert_eq!(err.reason(), "config_not_found");
        let cm = ConfigMap {
            data: Some([("other".to_owned(), "x".to_owned())].into()),
            ..ConfigMap::default()
        };
        let err = rules_text(&source(), Some(&cm)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config ConfigMap kube-fim/rules has no key aide.conf"
        );
        assert_eq!(err.reason(), "config_key_missing");
        let cm = ConfigMap {
            data: Some([("aide.conf".to_owned(), "/etc p\n".to_owned())].into()),
            ..ConfigMap::default()
        };
        assert_eq!(rules_text(&source(), Some(&cm)).unwrap(), "/etc p\n");
        assert_eq!(
            rules_text(&ConfigSource::Default, None).unwrap(),
            DEFAULT_RULES
        );
    }

    #[test]
    fn every_reason_is_a_listed_label_value() {
        let errors = [
            ConfigError::NotFound {
                namespace: "a".into(),
                name: "b".into(),
            },
            ConfigError::KeyMissing {
                namespace: "a".into(),
                name: "b".into(),
                key: "c".into(),
            },
            ConfigError::Invalid {
                origin: "a".into(),
                message: "b".into(),
            },
        ];
        for e in errors {
            assert!(
                crate::metrics_labels::ERROR_REASONS.contains(&e.reason()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn rules_never_make_the_operator_read_its_own_files() {
        let token = std::env::temp_dir().join(format!("fim-token-{}", std::process::id()));
        std::fs::write(&token, "c2VjcmV0LXRva2Vu\n").unwrap();
        let text = format!("/etc p\n@@include {}\n", token.display());
        let err = validate(&text, &source()).unwrap_err().to_string();
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
