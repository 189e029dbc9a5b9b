//! Finding the linters hack/ensure-tools.sh installs into `~/.cache/kube-fim/venv/`.

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The version hack/ensure-tools.sh installs (`<VARIABLE>=...`), so the two cannot drift.
pub fn pinned_version(variable: &str) -> String {
    let script = repo_root().join("hack/ensure-tools.sh");
    let text = std::fs::read_to_string(&script)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    let prefix = format!("{variable}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} line in {}", script.display()))
        .trim()
        .to_string()
}

/// `$<override_env>`, else `<cache>/venv/<tool>-<version>/bin/<tool>` as hack/ensure-tools.sh
/// installs it (the version from its `<version_variable>=` line).
pub fn installed_tool(tool: &str, override_env: &str, version_variable: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_env) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("KUBE_FIM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kube-fim")))
        .expect("neither KUBE_FIM_CACHE nor HOME is set");
    let path = cache
        .join("venv")
        .join(format!("{tool}-{}", pinned_version(version_variable)))
        .join("bin")
        .join(tool);
    assert!(
        path.is_file(),
        "{tool} is missing at {}: install it with `hack/ensure-tools.sh` (or `make tools`; \
         `make test` does it first)",
        path.display()
    );
    path
}
