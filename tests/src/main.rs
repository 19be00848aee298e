//! The test app: the demo registry behind the whole command line, built in
//! this package so the black-box suites can spawn it (`CARGO_BIN_EXE_*`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match whirligig_handler::demo::registry() {
        Ok(registry) => whirligig_handler::main(registry).await,
        Err(error) => {
            eprintln!("whirligig-test-app: {error}");
            ExitCode::from(2)
        }
    }
}
