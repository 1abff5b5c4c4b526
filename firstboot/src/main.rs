fn main() {
    eprintln!("firstboot: not wired yet");
    std::process::exit(1);
}
