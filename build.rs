//! Records the git commit tessera is built from (for `run.json` provenance) as
//! TESSERA_GIT_COMMIT: `git rev-parse HEAD`, with `-dirty` when tracked files differ from it, or
//! `unknown` outside a git checkout (e.g. a crates.io build). Rebuilds when HEAD moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).filter(|c| c.len() == 40);
    let commit = match commit {
        Some(c) => {
            // --no-optional-locks: status must not refresh the index. On a fresh clone the first
            // status rewrites it, and since the index is watched below, the next cargo command
            // (the README's tests after its example) would run this script again and rebuild
            // tessera for nothing.
            let dirty = git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=TESSERA_GIT_COMMIT={commit}");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
