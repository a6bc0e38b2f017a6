fn main() {
    eprintln!("llama-server: not built yet (see issues 3 and 4)");
    std::process::exit(2);
}
