fn main() {
    eprintln!("nodeimage: not wired yet");
    std::process::exit(1);
}
