//! The test app: the demo registry behind the whole command line, built in
//! this package so the black-box suites can spawn it (`CARGO_BIN_EXE_*`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    whirligig_handler::main(whirligig_handler::demo::registry(), whirligig_handler::binary!()).await
}
