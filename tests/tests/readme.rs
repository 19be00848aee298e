//! The README's code is the repository's: every block it marks as a file of
//! the example crates (`<!-- file: PATH -->`), an excerpt of one
//! (`<!-- excerpt: PATH -->`) or a manifest's dependency lines
//! (`<!-- dependencies: PATH -->`, the `path = ...` a workspace needs left
//! out) must match that file, so the snippets a newcomer copies compile.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;

/// Each marked block: the marker's kind, its path, and the block's text.
fn marked_blocks(readme: &str) -> Vec<(String, String, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line.strip_prefix("<!-- ").and_then(|rest| rest.strip_suffix(" -->")) else { continue };
        let Some((kind, path)) = marker.split_once(": ") else { continue };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "{kind}: {path} is not followed by a code block but by {fence:?}");
        let body: Vec<&str> = lines.by_ref().take_while(|line| !line.starts_with("```")).collect();
        blocks.push((kind.to_owned(), path.to_owned(), body.join("\n") + "\n"));
    }
    blocks
}

/// The `[dependencies]` table as a user writes it: no workspace `path`.
fn dependencies(manifest: &str) -> String {
    let table = manifest.split("[dependencies]\n").nth(1).unwrap().split("\n[").next().unwrap();
    let lines = table.lines().filter(|line| !line.trim().is_empty()).map(|line| {
        let Some(at) = line.find(", path = \"") else { return line.to_owned() };
        let end = line[at + 10..].find('"').unwrap() + at + 11;
        format!("{}{}", &line[..at], &line[end..])
    });
    format!("[dependencies]\n{}\n", lines.collect::<Vec<_>>().join("\n"))
}

#[test]
fn every_marked_block_is_the_file_it_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    let kinds: Vec<&str> = blocks.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert!(
        ["file", "excerpt", "dependencies"].iter().all(|kind| kinds.contains(kind)),
        "the README lost its marked snippets: {kinds:?}"
    );
    for (kind, path, block) in &blocks {
        let file = std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"));
        match kind.as_str() {
            "file" => assert_eq!(block, &file, "the README's copy of {path} differs from the file"),
            "excerpt" => {
                assert!(file.contains(block.as_str()), "the README's excerpt of {path} is not in it:\n{block}")
            }
            "dependencies" => assert_eq!(block, &dependencies(&file), "the README's dependencies differ from {path}"),
            other => panic!("unknown README marker {other:?} for {path}"),
        }
    }
}

#[test]
fn a_changed_file_is_caught() {
    let readme = "<!-- file: a.rs -->\n```rust\nfn a() {}\n```\n";
    assert_eq!(marked_blocks(readme), [("file".to_owned(), "a.rs".to_owned(), "fn a() {}\n".to_owned())]);
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nserde = \"1\"\nme = { version = \"0.1\", path = \"../..\" }\n\n[dev-dependencies]\nbase64 = \"0.22\"\n";
    assert_eq!(dependencies(manifest), "[dependencies]\nserde = \"1\"\nme = { version = \"0.1\" }\n");
}
