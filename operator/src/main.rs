fn main() {
    eprintln!("llama-operator: not built yet (see issue 5)");
    std::process::exit(2);
}
