//! The `kaito` binary.

fn main() {
    let code = kaito_cli::run(std::env::args_os(), &mut std::io::stdout().lock(), &mut std::io::stderr().lock());
    std::process::exit(code);
}
