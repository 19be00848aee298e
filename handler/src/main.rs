//! The demo app: the example tasks of [`whirligig_handler::demo`] behind the
//! whole whirligig command line.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match whirligig_handler::demo::registry() {
        Ok(registry) => whirligig_handler::main(registry).await,
        Err(error) => {
            eprintln!("whirligig: {error}");
            ExitCode::from(2)
        }
    }
}
