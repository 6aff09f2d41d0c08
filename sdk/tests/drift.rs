//! The SDK, the host and the WIT files must agree on what `flotilla:plugin` is.
//!
//! `wit/VERSIONS` records, for each released version of the package, the digest of its WIT
//! files. Changing a `.wit` file without recording it (and, once plugins exist outside this
//! repository, bumping the version) fails here.

use std::path::Path;

use sha2::{Digest, Sha256};

fn wit_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/plugin"))
}

/// The digest of the package's WIT files in `dir`: names and contents, in name order.
fn digest_of(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("wit/plugin")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wit"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.file_name().unwrap().to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).expect("read"));
        hasher.update([0]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn wit_digest() -> String {
    digest_of(wit_dir())
}

/// The digest `wit/VERSIONS` records for a version.
fn recorded(version: &str) -> Option<String> {
    let versions = std::fs::read_to_string(wit_dir().join("../VERSIONS")).expect("wit/VERSIONS");
    let wanted = format!("flotilla:plugin@{version} ");
    versions
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&wanted))
        .map(|d| d.trim().to_owned())
}

fn package_version() -> String {
    let meta = std::fs::read_to_string(wit_dir().join("meta.wit")).expect("meta.wit");
    let line = meta
        .lines()
        .find_map(|l| l.strip_prefix("package flotilla:plugin@"))
        .expect("package line");
    line.trim_end_matches(';').to_owned()
}

#[test]
fn the_sdk_carries_the_version_of_the_wit_package() {
    assert_eq!(flotilla_sdk::WIT_VERSION, package_version());
}

#[test]
fn the_wit_files_match_their_recorded_digest() {
    let version = package_version();
    let recorded = recorded(&version)
        .unwrap_or_else(|| panic!("wit/VERSIONS has no line for flotilla:plugin@{version}"));
    assert_eq!(
        recorded,
        wit_digest(),
        "wit/plugin changed without updating wit/VERSIONS; if plugins built against the \
         recorded files can no longer load, bump the package version too"
    );
}

/// Each released version is kept in `wit/released/flotilla-plugin@<version>` (the host's
/// compatibility tests build plugins against them), unchanged since its release.
#[test]
fn released_versions_are_kept_as_they_were_released() {
    let released = wit_dir().join("../released");
    let mut seen = 0;
    for entry in std::fs::read_dir(&released).expect("wit/released") {
        let dir = entry.expect("entry").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let version = name
            .strip_prefix("flotilla-plugin@")
            .unwrap_or_else(|| panic!("{name}: not flotilla-plugin@<version>"));
        let meta = std::fs::read_to_string(dir.join("meta.wit")).expect("meta.wit");
        assert!(
            meta.contains(&format!("package flotilla:plugin@{version};")),
            "{name}/meta.wit declares another version"
        );
        assert_eq!(
            recorded(version).as_deref(),
            Some(digest_of(&dir).as_str()),
            "{name} differs from the release recorded in wit/VERSIONS"
        );
        seen += 1;
    }
    assert!(seen > 0, "no released version in wit/released");
}
