//! One way to print an error with its causes.

use std::error::Error;

/// `error: cause: cause of the cause: …`, the way `{:#}` prints an `anyhow::Error`, but
/// a cause whose text the line already holds is not repeated (an error that shows its
/// source in its own message and also returns it from `source()` reads once).
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let e = E("a", Some(Box::new(E("b", Some(Box::new(E("c", None)))))));
        assert_eq!(chain(&e), "a: b: c");
        // A message that already shows its source does not repeat it.
        let e = E("writing x: denied", Some(Box::new(E("denied", None))));
        assert_eq!(chain(&e), "writing x: denied");
    }
}
