//! Helpers shared by the unit tests of the policy modules.

use crate::FunctionSpec;

/// Annotations or labels.
pub(crate) type Keys<'a> = &'a [(&'a str, &'a str)];

/// A function `f` with these annotations and labels.
pub(crate) fn spec(annotations: Keys, labels: Keys) -> FunctionSpec {
    let mut s = FunctionSpec::new("f", "img");
    for (k, v) in annotations {
        s.annotations.insert(k.to_string(), v.to_string());
    }
    for (k, v) in labels {
        s.labels.insert(k.to_string(), v.to_string());
    }
    s
}
