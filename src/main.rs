//! Thin entry point: all the work is in the library.

fn main() {
    std::process::exit(bpfplan::run());
}
