//! The README's AWS consumer is kcl-core's `aws_consumer` example, line for line (the example is
//! built in CI and stopped with SIGTERM by `aws_consumer.rs`; the README's Rust blocks are
//! compiled as kcl-core's doc tests), and it stays short.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn the_readme_aws_consumer_is_the_example_and_is_15_lines_below_its_import() {
    let example = read("kcl-core/examples/aws_consumer.rs");
    let readme = read("README.md");
    let block = readme
        .split("```rust,no_run\n")
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .find(|block| block.contains(".aws()"))
        .expect("the README has a rust,no_run block with .aws()");
    assert_eq!(
        block, example,
        "the README's AWS consumer differs from the example"
    );
    let below_import = example
        .lines()
        .skip_while(|l| l.starts_with("use ") || l.is_empty());
    assert_eq!(below_import.count(), 15);
}
