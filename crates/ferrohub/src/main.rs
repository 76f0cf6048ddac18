//! `ferrohub`: run a hub (`serve`) or talk to one with `az iot hub`-shaped
//! commands. See [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
