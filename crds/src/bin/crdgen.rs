//! Writes the CRD YAML and its kustomization.yaml.
//!
//! Usage: `crdgen [OUT_DIR]`; OUT_DIR defaults to `config/crd` in the workspace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => workspace_root().join(kube_fim_crds::CRD_DIR),
        [flag] if flag == "-h" || flag == "--help" => {
            println!(
                "usage: crdgen [OUT_DIR]  (default: <workspace>/{})",
                kube_fim_crds::CRD_DIR
            );
            return ExitCode::SUCCESS;
        }
        [dir] => PathBuf::from(dir),
        _ => {
            eprintln!("usage: crdgen [OUT_DIR]");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, content) in kube_fim_crds::generated_files() {
        let path = dir.join(&name);
        if fs::read_to_string(&path).is_ok_and(|old| old == content) {
            println!("unchanged {}", path.display());
            continue;
        }
        if let Err(err) = fs::write(&path, content) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ is inside the workspace")
}
