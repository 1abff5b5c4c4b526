//! A FAT volume from untrusted bytes: the NODECONFIG partition and the label-based data
//! sources (`cidata`, `config-2`) read FAT images that the user or the cloud wrote.
//! Opens the bytes as a whole volume, reads the label, lists and reads every file, and
//! looks up the paths firstboot reads; also parses the first sector alone.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use nodeimage_core::fat::{BootSector, FatImage, Stat};

/// The files firstboot looks for on a FAT volume (see firstboot/src/source/*.rs).
const PATHS: &[&str] = &[
    "node.yaml",
    "config.ign",
    "user-data",
    "meta-data",
    "openstack/latest/user_data",
    "openstack/latest/meta_data.json",
];

fuzz_target!(|data: &[u8]| {
    if data.len() >= 512 {
        if let Ok(boot) = BootSector::parse(&data[..512]) {
            let _ = boot.volume_bytes();
        }
    }
    let len = data.len() as u64;
    let Ok(mut image) = FatImage::open(Cursor::new(data), 0, len) else {
        return;
    };
    let _ = image.label();
    let _ = (image.volume_id(), image.fat_type(), image.boot_sector());
    if let Ok(files) = image.list_files() {
        for f in files.iter().take(16) {
            let _ = image.stat(&f.path);
        }
    }
    let _ = image.read_all();
    for path in PATHS {
        // What firstboot's FAT reader does: stat, then read what is a file.
        if let Ok(Some(Stat::File { .. })) = image.stat(path) {
            let _ = image.read_file(path);
        }
        let _ = image.exists(path);
    }
});
