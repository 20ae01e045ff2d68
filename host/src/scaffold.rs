//! `salesflow plugin new NAME`: a standalone cargo project for a run-time plugin library,
//! outside this repository, depending on the plugin SDK (`salesflow-plugin-abi`) by path.
//! Its code is the example library `plugins/sdk/example-window` — a timer-driven window
//! stage and a file sink, with unit tests through the SDK's harness — renamed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The example library the project starts from.
const TEMPLATE: &str = include_str!("../../plugins/sdk/example-window/src/lib.rs");

/// Where this binary was built from: its SDK crate, if the source is still there.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk/abi");

/// The project's files, by path inside it.
pub fn files(name: &str, sdk: &Path) -> Vec<(PathBuf, String)> {
    let library = name.replace('-', "_");
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
description = "salesflow run-time plugins: {name} (a stage) and {name}-file (a sink)"

[lib]
# A shared library the salesflow host loads from its `[plugins] dir`.
crate-type = ["cdylib"]

[dependencies]
salesflow-plugin-abi = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
# A panic must unwind to the SDK's boundary (it becomes an error status), never abort.
panic = "unwind"

# A project of its own, even when created inside another cargo workspace.
[workspace]
"#,
        sdk = sdk.display()
    );
    let code = TEMPLATE
        .replace("example-window", name)
        .replace("example-file", &format!("{name}-file"))
        .replace(
            "//! An example run-time plugin library with two plugins",
            &format!("//! `{name}`: a run-time plugin library with two plugins"),
        );
    let readme = format!(
        "# {name}\n\n\
         Run-time plugins for salesflow: the stage `{name}` (a counting window that emits on a\n\
         timer) and the sink `{name}-file` (JSON lines in a file). Start from them.\n\n\
         ```sh\n\
         cargo test                      # the plugins through the C boundary, no server needed\n\
         cargo build --release           # target/release/lib{library}.so\n\
         cp target/release/lib{library}.so /path/to/the/plugins/dir/\n\
         ```\n\n\
         Then name them in pipeline.toml (`type = \"{name}\"`, `type = \"{name}-file\"`) with\n\
         `[plugins] dir` pointing at that folder, and restart salesflow: its log lists\n\
         the plugins it loaded. The walk-through is salesflow's docs/plugins.md.\n"
    );
    vec![
        (PathBuf::from("Cargo.toml"), cargo),
        (PathBuf::from("src/lib.rs"), code),
        (PathBuf::from("README.md"), readme),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
    ]
}

/// Writes the project `name` under `parent`, all or nothing.
pub fn create(name: &str, parent: &Path, sdk: Option<&Path>) -> Result<PathBuf, String> {
    if !salesflow_host::is_plugin_name(name) {
        return Err(format!(
            "{name:?} cannot name a plugin: it must be {}",
            salesflow_host::PLUGIN_NAME_RULE
        ));
    }
    let sdk = match sdk {
        Some(path) => path.to_path_buf(),
        None => PathBuf::from(BUILT_SDK),
    };
    let sdk = sdk.canonicalize().map_err(|e| {
        format!(
            "the plugin SDK (salesflow-plugin-abi) is not at {}: {e}; give its folder with --sdk",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} holds no Cargo.toml: --sdk names the folder of salesflow-plugin-abi",
            sdk.display()
        ));
    }
    let project = parent.join(name);
    if project.exists() {
        return Err(format!(
            "{} exists already; nothing was written",
            project.display()
        ));
    }
    // Written beside, then renamed into place: a failure leaves nothing half-made.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .map_err(|e| format!("cannot write in {}: {e}", parent.display()))?;
    for (path, text) in files(name, &sdk) {
        let path = staging.path().join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &project).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        format!("{}: {e}", project.display())
    })?;
    Ok(project)
}

/// `salesflow plugin new NAME [--dir PARENT] [--sdk PATH]`.
pub fn run_new(name: &str, parent: &Path, sdk: Option<&Path>) -> ExitCode {
    match create(name, parent, sdk) {
        Ok(project) => {
            let library = name.replace('-', "_");
            println!(
                "created {shown}: the stage `{name}` and the sink `{name}-file`\n\
                 next:\n  \
                 cd {shown}\n  \
                 cargo test\n  \
                 cargo build --release\n  \
                 cp target/release/lib{library}.so <the folder of [plugins] dir>/",
                shown = project.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("salesflow plugin new: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_renames_the_example_throughout() {
        let files = files("shop-window", Path::new("/sdk"));
        let code = &files[1].1;
        assert!(code.contains(r#"stage(Window, "shop-window""#), "{code}");
        assert!(code.contains(r#"sink(JsonLines, "shop-window-file""#));
        assert!(!code.contains("example-"));
        assert!(
            files[0]
                .1
                .contains(r#"salesflow-plugin-abi = { path = "/sdk" }"#)
        );
    }

    #[test]
    fn a_bad_name_or_an_existing_folder_writes_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let sdk = Path::new(BUILT_SDK);
        assert!(create("Bad Name", parent.path(), Some(sdk)).is_err());
        std::fs::create_dir(parent.path().join("taken")).unwrap();
        let e = create("taken", parent.path(), Some(sdk)).unwrap_err();
        assert!(e.contains("exists already"), "{e}");
        let e = create("fine", parent.path(), Some(Path::new("/nowhere"))).unwrap_err();
        assert!(e.contains("--sdk"), "{e}");
        let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the folder made by the test");
        let made = create("fine", parent.path(), Some(sdk)).unwrap();
        assert!(made.join("src/lib.rs").is_file() && made.join("Cargo.toml").is_file());
    }
}
