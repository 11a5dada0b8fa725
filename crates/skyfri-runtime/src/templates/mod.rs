//! The templates' shim files, embedded in the binary and written next to each artefact's
//! `function/` folder so an artefact is self-contained and never changes under a replica.

use skyfri_core::Template;

/// The Python server shared by python3, python3-http and exec (a mode argument picks the
/// calling convention), so the HTTP code exists once.
pub const PYTHON_SHIM: &str = "skyfri_shim.py";
/// The Node server of the node template.
pub const NODE_SHIM: &str = "skyfri_shim.js";

pub const PYTHON_SHIM_SRC: &str = include_str!("skyfri_shim.py");
pub const NODE_SHIM_SRC: &str = include_str!("skyfri_shim.js");

/// The files (name relative to the artefact root, contents) a template adds to an artefact.
pub fn shim_files(template: Template) -> &'static [(&'static str, &'static str)] {
    match template {
        Template::Python3 | Template::Python3Http | Template::Exec => {
            &[(PYTHON_SHIM, PYTHON_SHIM_SRC)]
        }
        Template::Node => &[(NODE_SHIM, NODE_SHIM_SRC)],
        // The user's program is the server: nothing to add.
        Template::Http => &[],
    }
}

/// The mode argument the Python shim takes for a template, if the template uses it.
pub fn python_mode(template: Template) -> Option<&'static str> {
    match template {
        Template::Python3 => Some("python3"),
        Template::Python3Http => Some("python3-http"),
        Template::Exec => Some("exec"),
        Template::Node | Template::Http => None,
    }
}
