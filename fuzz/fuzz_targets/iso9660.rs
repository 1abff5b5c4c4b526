//! An ISO9660 image from untrusted bytes: OpenStack config drives (`config-2`), NoCloud
//! seeds (`cidata`) and the Azure provisioning ISO are read with
//! `firstboot::source::iso9660::IsoFs`, which takes a `File`. The input is written to
//! one file per process (in /dev/shm when it exists), which is truncated and rewritten
//! for each input.
#![no_main]

use firstboot::source::iso9660::{has_iso_signature, IsoFs};
use firstboot::source::FilesystemReader;
use libfuzzer_sys::fuzz_target;

/// The files the label-based sources read (firstboot/src/source/{nocloud,openstack,
/// azure,nodeconfig}.rs), plus a few that exercise the lookup.
const PATHS: &[&str] = &[
    "user-data",
    "meta-data",
    "openstack/latest/user_data",
    "openstack/latest/meta_data.json",
    "ovf-env.xml",
    "node.yaml",
    "config.ign",
    "/",
    "openstack",
];

fuzz_target!(|data: &[u8]| {
    nodeimage_fuzz::with_scratch_file(data, |_, file| read(file));
});

fn read(file: std::fs::File) {
    // firstboot::source::blockdev::probe checks the signature first; open is tried
    // whatever it says, so that open's own checks see every input too.
    let _ = has_iso_signature(&file);
    let Ok(fs) = IsoFs::open(file) else {
        return;
    };
    let _ = fs.label();
    let _ = fs.kind();
    for path in PATHS {
        let _ = fs.read_file(path);
    }
}
