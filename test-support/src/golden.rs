//! Golden files: the expected output of a renderer, kept as a plain file in the
//! repository and compared byte for byte. `UPDATE_GOLDEN=1` writes the actual output
//! instead (then review the diff with git).
//!
//! One small helper rather than `insta` or `expect-test`: the goldens here are real
//! files in their own formats (systemd units, Kubernetes manifests, nftables rulesets,
//! containerd TOML) that people read and tools load as they are, named by what they
//! render at run time. insta would wrap each in a `.snap` file with a metadata header;
//! expect-test's `expect_file!` works on plain files but resolves paths against the
//! calling source file and brings its own variable. Neither adds a check this does not
//! make.

use std::path::Path;

/// The variable that makes [`check`] write the goldens.
pub const UPDATE_VAR: &str = "UPDATE_GOLDEN";

fn updating() -> bool {
    std::env::var_os(UPDATE_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compare `actual` with the golden file `dir/name` (`name` may contain `/`). With
/// `UPDATE_GOLDEN=1` the file is (re)written instead. On a difference the panic shows
/// the first differing line and how to accept the change.
pub fn check(dir: impl AsRef<Path>, name: &str, actual: &str) {
    let path = dir.as_ref().join(name);
    if updating() {
        std::fs::create_dir_all(path.parent().expect("a file in a directory")).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden {} cannot be read ({e}); create it with {UPDATE_VAR}=1 and review it",
            path.display()
        )
    });
    if want != actual {
        panic!(
            "golden {} differs from the output; if the change is intended, rerun with \
             {UPDATE_VAR}=1 and review the diff\n{}",
            path.display(),
            first_difference(&want, actual)
        );
    }
}

/// The first line where `want` and `got` differ, with a line of context each side.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let n = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    let show = |v: &[&str], i: usize| v.get(i).map_or("<end>".to_string(), |l| format!("{l:?}"));
    let mut s = format!("first difference at line {}:\n", n + 1);
    if n > 0 {
        s.push_str(&format!("   same: {}\n", show(&w, n - 1)));
    }
    s.push_str(&format!(
        "   want: {}\n   got:  {}\n",
        show(&w, n),
        show(&g, n)
    ));
    if n + 1 < w.len().max(g.len()) {
        s.push_str(&format!(
            "   then want {} / got {}\n",
            show(&w, n + 1),
            show(&g, n + 1)
        ));
    }
    if want.lines().eq(got.lines()) {
        s.push_str("   (only line endings or the final newline differ)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_output_passes_and_a_difference_names_the_line() {
        let d = std::env::temp_dir().join(format!("golden-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.txt"), "one\ntwo\nthree\n").unwrap();
        check(&d, "sub/a.txt", "one\ntwo\nthree\n");
        let e =
            std::panic::catch_unwind(|| check(&d, "sub/a.txt", "one\nTWO\nthree\n")).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("line 2") && msg.contains("\"TWO\""), "{msg}");
        assert!(msg.contains("UPDATE_GOLDEN=1"), "{msg}");
        let e = std::panic::catch_unwind(|| check(&d, "missing.txt", "x")).unwrap_err();
        assert!(e
            .downcast_ref::<String>()
            .unwrap()
            .contains("cannot be read"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_first_difference_is_shown_with_context() {
        let s = first_difference("a\nb\nc\n", "a\nb\nd\n");
        assert!(s.contains("line 3") && s.contains("same: \"b\""), "{s}");
        let s = first_difference("a\nb\n", "a\nb");
        assert!(s.contains("final newline"), "{s}");
    }
}
